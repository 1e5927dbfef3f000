//! Times (and optionally disassembles) the loop kernels of a printed kernel
//! program (`netc compile MODEL --emit kernels-train --batch N`):
//! `cargo run --release -p netc-compiler --example loop_speed -- FILE
//! [NAME...] [--disasm] [--reps N] [--opt-none] [--check]
//! [--kernels cranelift|avx2]`. Buffers hold pseudo-random values in [-1, 1);
//! `--check` instead fills them with a spread of bit patterns (specials
//! first), runs each kernel `--reps` times and prints a hash of all
//! buffers, to compare two builds (or the two paths) bit for bit.
//! `--opt-none` compiles at Cranelift's `none` level (Cranelift only).
//! Kernels run on the AVX2 path where it takes them (the native code's
//! disassembly via `objdump`, if installed, with `--disasm`), and are
//! timed on both paths; `--kernels cranelift` runs the Cranelift path only,
//! `--kernels avx2` (or `NETC_KERNELS=avx2`) the `ymm` code also on an
//! AVX-512 host.
use netc_compiler::codegen::cpu::loops::{
    disassembly, CompiledLoop, DEFAULT_OPT_LEVEL, EDGE_INPUTS,
};
use netc_compiler::codegen::cpu::KernelPath;
use netc_compiler::kernel::parse::parse_program;
use netc_compiler::kernel::KernelBody;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let text = std::fs::read_to_string(&args[0]).expect("read file");
    let disasm = args.iter().any(|a| a == "--disasm");
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .map_or(200, |p| args[p + 1].parse().unwrap());
    let names: Vec<&String> = args[1..]
        .iter()
        .filter(|a| {
            !a.starts_with("--")
                && a.parse::<usize>().is_err()
                && !matches!(a.as_str(), "cranelift" | "avx2")
        })
        .collect();
    let p = parse_program(&text).expect("parse");
    let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
    let mut data: Vec<Vec<f32>> = lens
        .iter()
        .enumerate()
        .map(|(b, &n)| {
            let mut s = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(b as u64 + 1) | 1;
            (0..n)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
                })
                .collect()
        })
        .collect();
    let check = args.iter().any(|a| a == "--check");
    let kernels = args
        .windows(2)
        .find(|w| w[0] == "--kernels")
        .map(|w| w[1].clone())
        .or_else(|| std::env::var("NETC_KERNELS").ok());
    let cranelift_only = kernels.as_deref() == Some("cranelift");
    let path = if kernels.as_deref() == Some("avx2") {
        KernelPath::Avx2
    } else {
        KernelPath::Auto
    };
    if check {
        // Bit patterns spread over all floats, specials first.
        let specials = EDGE_INPUTS;
        for (b, v) in data.iter_mut().enumerate() {
            for (i, x) in v.iter_mut().enumerate() {
                *x = match specials.get(i) {
                    Some(&s) => s,
                    None => {
                        let bits = (i as u32).wrapping_mul(0x9E37_79B1)
                            ^ (b as u32).wrapping_mul(0x85EB_CA6B);
                        let f = f32::from_bits(bits);
                        // Half of them in the interesting range.
                        if i % 2 == 0 {
                            f
                        } else {
                            ((bits >> 8) as f32 / (1u32 << 24) as f32) * 240.0 - 120.0
                        }
                    }
                };
            }
        }
    }
    let ptrs: Vec<*mut f32> = data.iter_mut().map(|v| v.as_mut_ptr()).collect();
    for k in &p.kernels {
        let KernelBody::Loop(lk) = &k.body else {
            continue;
        };
        if !names.is_empty() && !names.iter().any(|n| **n == k.name) {
            continue;
        }
        if disasm {
            println!(
                "==== {}\n{}",
                k.name,
                disassembly(
                    lk,
                    &lens,
                    if args.iter().any(|a| a == "--opt-none") {
                        netc_compiler::codegen::cpu::OptLevel::None
                    } else {
                        DEFAULT_OPT_LEVEL
                    }
                )
                .unwrap()
            );
        }
        let opt_none = args.iter().any(|a| a == "--opt-none");
        let opt = if opt_none {
            netc_compiler::codegen::cpu::OptLevel::None
        } else {
            DEFAULT_OPT_LEVEL
        };
        let cranelift = CompiledLoop::compile_with_opt_level(lk, &lens, opt).unwrap();
        let native = if cranelift_only || opt_none {
            None
        } else {
            Some(CompiledLoop::compile_with(lk, &lens, path).unwrap())
                .filter(|c| c.native_isa().is_some())
        };
        if disasm {
            if let Some(code) = native.as_ref().and_then(|c| c.native_code()) {
                print_native(code);
            }
        }
        let time = |c: &CompiledLoop, reps: usize| {
            let extent = c.parallel_extent().unwrap_or(usize::MAX);
            let mut times = Vec::new();
            for _ in 0..reps {
                let t = Instant::now();
                unsafe { c.run_range(ptrs.as_ptr(), 0, extent) };
                times.push(t.elapsed().as_secs_f64() * 1e6);
            }
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            (times[0], times[times.len() / 2])
        };
        let c = native.as_ref().unwrap_or(&cranelift);
        let (best, median) = time(c, reps);
        if check {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for v in &data {
                for x in v {
                    h = (h ^ u64::from(x.to_bits())).wrapping_mul(0x100_0000_01b3);
                }
            }
            println!("{:40} hash {h:016x}", k.name);
            continue;
        }
        let path = match native.as_ref().and_then(|c| c.native_isa()) {
            Some(netc_compiler::codegen::cpu::IsaLevel::Avx512) => "zmm",
            Some(_) => "ymm",
            None => "cranelift",
        };
        print!(
            "{:40} {path:9} min {:8.2} µs  median {:8.2} µs",
            k.name, best, median
        );
        if native.is_some() {
            let (best, median) = time(&cranelift, reps);
            print!("   cranelift min {best:8.2} µs  median {median:8.2} µs");
        }
        println!();
    }
}

/// The AVX2 code through `objdump`, or its size when that is missing.
fn print_native(code: &[u8]) {
    let path = std::env::temp_dir().join(format!("netc_loop_{}.bin", std::process::id()));
    std::fs::write(&path, code).expect("write code");
    let out = std::process::Command::new("objdump")
        .args(["-D", "-b", "binary", "-mi386:x86-64", "-Mintel"])
        .arg(&path)
        .output();
    match out {
        Ok(o) if o.status.success() => println!("{}", String::from_utf8_lossy(&o.stdout)),
        _ => println!("AVX2 code, {} bytes (no objdump)", code.len()),
    }
    let _ = std::fs::remove_file(&path);
}
