//! The AVX2 loop-kernel path against the Cranelift one: for each kernel
//! below both paths are compiled and run over inputs spread over special
//! values (±0, ±inf, NaN, the `exp` clamps, huge and tiny magnitudes,
//! random values), and every output buffer must match bit for bit, on one
//! thread and split across two. On AVX-512 hosts the default path runs
//! `zmm` steps and [`KernelPath::Avx2`] the `ymm` ones: both are compared.
//! On hosts without AVX2 + FMA every path is Cranelift and the comparison
//! is trivially true.

mod common;

use netc_compiler::codegen::cpu::loops::CompiledLoop;
use netc_compiler::codegen::cpu::loops::EDGE_INPUTS;
use netc_compiler::codegen::cpu::{IsaLevel, KernelPath};
use netc_compiler::kernel::parse::parse_program;
use netc_compiler::kernel::KernelBody;

/// Kernels of the course LSTM, GRU and CNN training steps (batch 32,
/// `netc compile --emit kernels-train`) and small ones for the corners:
/// `(name, whether the AVX2 emitter must take it)`.
const PROGRAM: &str = "program avx2 (batch 1) {
  %0 = temp \"x\" [16384]
  %1 = temp \"y\" [16384]
  %2 = temp \"z\" [16384]
  %3 = temp \"gates_in\" [307200]
  %4 = temp \"c_prev\" [8192]
  %5 = temp \"gates\" [16384]
  %6 = temp \"state\" [8192]
  %7 = temp \"hu\" [16384]
  %8 = temp \"dstate\" [8192]
  %9 = temp \"dgates\" [307200]
  %10 = temp \"dprev\" [8192]
  %11 = temp \"o1\" [16384]
  %12 = temp \"o2\" [16384]
  %13 = temp \"o3\" [16384]

  kernel lstm_cell (loop) {
    for i0 in 0..32 {
      for i1 in 0..128 {
        %5[512*i0 + i1] = sigmoid((%3[5120*i0 + i1 + 512] + %7[512*i0 + i1]))
      }
      for i1 in 0..128 {
        %5[512*i0 + i1 + 128] = sigmoid((%3[5120*i0 + i1 + 640] + %7[512*i0 + i1 + 128]))
      }
      for i1 in 0..128 {
        %5[512*i0 + i1 + 256] = tanh((%3[5120*i0 + i1 + 768] + %7[512*i0 + i1 + 256]))
      }
      for i1 in 0..128 {
        %5[512*i0 + i1 + 384] = sigmoid((%3[5120*i0 + i1 + 896] + %7[512*i0 + i1 + 384]))
      }
      for i1 in 0..128 {
        s0 = ((%5[512*i0 + i1 + 128] * %4[256*i0 + i1 + 128]) + (%5[512*i0 + i1] * %5[512*i0 + i1 + 256]))
        %6[256*i0 + i1 + 128] = s0
        %6[256*i0 + i1] = (%5[512*i0 + i1 + 384] * tanh(s0))
      }
    }
  }
  kernel lstm_gates_grad (loop) {
    for i0 in 0..32 {
      for i1 in 0..128 {
        s0 = %5[512*i0 + i1]
        s1 = %5[512*i0 + i1 + 128]
        s2 = %5[512*i0 + i1 + 256]
        s3 = %5[512*i0 + i1 + 384]
        s4 = %4[256*i0 + i1 + 128]
        s5 = tanh(((s1 * s4) + (s0 * s2)))
        s6 = %8[256*i0 + i1]
        s7 = (%8[256*i0 + i1 + 128] + ((s6 * s3) * (1.0 - (s5 * s5))))
        %10[256*i0 + i1 + 128] = (s7 * s1)
        %9[5120*i0 + i1 + 4608] = ((s7 * s2) * (s0 * (1.0 - s0)))
        %9[5120*i0 + i1 + 4736] = ((s7 * s4) * (s1 * (1.0 - s1)))
        %9[5120*i0 + i1 + 4864] = ((s7 * s0) * (1.0 - (s2 * s2)))
        %9[5120*i0 + i1 + 4992] = ((s6 * s5) * (s3 * (1.0 - s3)))
      }
    }
  }
  kernel gru_cell (loop, vars 2, scalars 1) {
    for i0 in 0..32 {
      for i1 in 0..64 {
        %5[192*i0 + i1] = sigmoid((%3[9600*i0 + i1 + 192] + %7[192*i0 + i1]))
      }
      for i1 in 0..64 {
        %5[192*i0 + i1 + 64] = sigmoid((%3[9600*i0 + i1 + 256] + %7[192*i0 + i1 + 64]))
      }
      for i1 in 0..64 {
        %5[192*i0 + i1 + 128] = tanh((%3[9600*i0 + i1 + 320] + (%5[192*i0 + i1 + 64] * %7[192*i0 + i1 + 128])))
      }
      for i1 in 0..64 {
        %6[64*i0 + i1] = ((%5[192*i0 + i1] * %4[64*i0 + i1]) + ((1.0 - %5[192*i0 + i1]) * %5[192*i0 + i1 + 128]))
      }
    }
  }
  kernel gru_grad (loop, vars 2, scalars 8) {
    for i0 in 0..32 {
      for i1 in 0..64 {
        s0 = %5[192*i0 + i1]
        s1 = %5[192*i0 + i1 + 64]
        s2 = %7[192*i0 + i1 + 128]
        s3 = %5[192*i0 + i1 + 128]
        s4 = %4[64*i0 + i1]
        s5 = %8[64*i0 + i1]
        s6 = ((s5 * (1.0 - s0)) * (1.0 - (s3 * s3)))
        %10[64*i0 + i1] = (s5 * s0)
        %9[192*i0 + i1] = ((s5 * (s4 - s3)) * (s0 * (1.0 - s0)))
        %9[192*i0 + i1 + 64] = ((s6 * s2) * (s1 * (1.0 - s1)))
        %9[192*i0 + i1 + 128] = (s6 * s1)
      }
    }
  }
  kernel elementwise (loop) {
    for i0 in 0..16384 {
      %11[i0] = max(%0[i0], %1[i0])
      %12[i0] = min(relu(%0[i0]), -0.0)
      %13[i0] = select(%0[i0] > %1[i0], sqrt(%0[i0]), max(%1[i0], 0.0))
    }
  }
  kernel arithmetic (loop) {
    for i0 in 0..16384 {
      %11[i0] = (((%0[i0] / %1[i0]) - %2[i0]) * neg(%0[i0]))
      %12[i0] = exp(%0[i0])
      %13[i0] = select(%1[i0] >= %2[i0], min(%0[i0], %1[i0]), select(%1[i0] < %0[i0], tanh(%2[i0]), sigmoid(%1[i0])))
    }
  }
  kernel tail (loop) {
    for i0 in 0..1003 {
      %11[i0] = sigmoid((%0[i0] * 3.0))
      %12[i0] = tanh((%1[i0] - %2[i0]))
    }
  }
  kernel tail_zmm (loop) {
    for i0 in 0..59 {
      %11[i0] = sigmoid(%0[i0])
      %12[i0] = select(%1[i0] > %2[i0], tanh(%1[i0]), max(%2[i0], %0[i0]))
    }
  }
  kernel set_once (loop) {
    for i0 in 0..1003 {
      s1 = (%1[i0] - %2[i0])
      s0 = (%0[i0] * s1)
      %11[i0] = (s0 - 1.0)
      s2 = (%2[i0] + s1)
      %12[i0] = sigmoid(s2)
    }
  }
  kernel nan_pairs (loop) {
    for i0 in 0..1003 {
      s1 = (%0[i0 + 52] - %0[i0 + 52])
      s0 = (%0[i0] * s1)
      %11[i0] = (s0 - 1.0)
      %12[i0] = (%0[i0] * s1)
      %13[i0] = sigmoid((%0[i0] + s1))
    }
  }
  kernel short_rows (loop) {
    for i0 in 0..7 {
      for i1 in 0..13 {
        %11[13*i0 + i1] = (tanh(%0[13*i0 + i1]) * %1[i0])
      }
      for i1 in 0..21 {
        %12[21*i0 + i1] = exp(max(%0[21*i0 + i1], %2[i0]))
      }
    }
  }
  kernel nest3 (loop) {
    for i0 in 0..4 {
      for i1 in 0..6 {
        for i2 in 0..40 {
          s0 = (%0[240*i0 + 40*i1 + i2] + %1[6*i0 + i1])
          %11[240*i0 + 40*i1 + i2] = sigmoid(s0)
          %12[240*i0 + 40*i1 + i2] = (s0 * %2[i0])
        }
      }
    }
  }
  kernel softmax (loop) {
    for i0 in 0..32 {
      s0 = -inf
      for i1 in 0..10 {
        s0 = max(s0, %0[10*i0 + i1])
      }
      s1 = 0.0
      for i1 in 0..10 {
        s2 = exp((%0[10*i0 + i1] - s0))
        %11[10*i0 + i1] = s2
        s1 = (s1 + s2)
      }
      for i1 in 0..10 {
        %11[10*i0 + i1] = (%11[10*i0 + i1] / s1)
      }
    }
  }
  kernel bias_grad (loop) {
    for i0 in 0..512 {
      s0 = 0.0
      for i2 in 0..32 {
        s0 = (s0 + %9[512*i2 + i0])
      }
      %11[i0] = s0
    }
  }
}
";

/// Kernels the AVX2 emitter must take (on hosts with AVX2 + FMA); the
/// others (short plain-arithmetic loops, reductions) stay on Cranelift.
const NATIVE: [&str; 11] = [
    "nan_pairs",
    "set_once",
    "lstm_cell",
    "lstm_gates_grad",
    "gru_cell",
    "elementwise",
    "arithmetic",
    "tail",
    "tail_zmm",
    "short_rows",
    "nest3",
];

fn inputs(len: usize, seed: u32) -> Vec<f32> {
    let specials = EDGE_INPUTS;
    (0..len)
        .map(|i| match specials.get((i * 7 + seed as usize * 3) % 61) {
            Some(&s) => s,
            None => {
                let h = (i as u32 ^ seed.wrapping_mul(0x85EB_CA6B)).wrapping_mul(0x9E37_79B1);
                let x = (h >> 8) as f32 / (1 << 24) as f32;
                match h % 4 {
                    0 => x * 240.0 - 120.0,
                    1 => x * 4.0 - 2.0,
                    2 => (x - 0.5) * 1e-6,
                    _ => f32::from_bits(h),
                }
            }
        })
        .collect()
}

/// Every buffer the kernel touches after running it on the special-value
/// inputs (the others stay empty).
fn bits(c: &CompiledLoop, lens: &[usize], threads: usize) -> Vec<Vec<u32>> {
    let mut data: Vec<Vec<f32>> = vec![Vec::new(); lens.len()];
    for &(b, n) in c.touched_lens() {
        data[b] = inputs(n, b as u32);
    }
    let mut bufs: Vec<&mut [f32]> = data.iter_mut().map(|v| &mut v[..]).collect();
    c.run(&mut bufs, threads).expect("runs");
    data.iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn avx2_loops_give_the_cranelift_bits() {
    let program = parse_program(PROGRAM).expect("parses");
    let lens: Vec<usize> = program.buffers.iter().map(|b| b.len).collect();
    for kernel in &program.kernels {
        let KernelBody::Loop(k) = &kernel.body else {
            continue;
        };
        let name = kernel.name.as_str();
        let portable =
            CompiledLoop::compile_with(k, &lens, KernelPath::Cranelift).expect("compiles");
        assert_eq!(portable.native_isa(), None);
        let want = bits(&portable, &lens, 1);
        // `Auto`: `zmm` steps on AVX-512 hosts; `Avx2`: `ymm` ones.
        for path in [KernelPath::Auto, KernelPath::Avx2] {
            let native = CompiledLoop::compile_with(k, &lens, path).expect("compiles");
            // (At most: an AVX-512 host without AVX-512DQ runs `ymm` steps.)
            let level = path.native_level().filter(|_| NATIVE.contains(&name));
            assert_eq!(native.native_isa().is_some(), level.is_some(), "{name}");
            assert!(native.native_isa() <= level, "{name} ({path:?})");
            assert_eq!(native.native_code().is_some(), level.is_some());
            assert_eq!(native.clif(), portable.clif(), "{name}");
            same_bits(name, path, &native, &want, &lens);
        }
    }
}

/// `native` on 1, 2 and 3 threads gives `want` (the Cranelift bits).
fn same_bits(
    name: &str,
    path: KernelPath,
    native: &CompiledLoop,
    want: &[Vec<u32>],
    lens: &[usize],
) {
    for threads in [1, 2, 3] {
        let got = bits(native, lens, threads);
        for (b, (g, w)) in got.iter().zip(want).enumerate() {
            if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
                panic!(
                    "{name} ({path:?}) on {threads} threads: buffer {b}[{i}] is \
                     {:#010x} ({}), Cranelift gives {:#010x} ({})",
                    g[i],
                    f32::from_bits(g[i]),
                    w[i],
                    f32::from_bits(w[i])
                );
            }
        }
    }
}

/// `run_range` over pieces of the outermost loop (as the runtime's
/// thread split calls it) gives the bits of one call.
#[test]
fn split_ranges_give_the_bits_of_one_call() {
    let program = parse_program(PROGRAM).expect("parses");
    let lens: Vec<usize> = program.buffers.iter().map(|b| b.len).collect();
    for kernel in &program.kernels {
        let KernelBody::Loop(k) = &kernel.body else {
            continue;
        };
        let c = CompiledLoop::compile(k, &lens).expect("compiles");
        let Some(n) = c.parallel_extent() else {
            continue;
        };
        let whole = bits(&c, &lens, 1);
        let mut data: Vec<Vec<f32>> = vec![Vec::new(); lens.len()];
        for &(b, n) in c.touched_lens() {
            data[b] = inputs(n, b as u32);
        }
        let ptrs: Vec<*mut f32> = data.iter_mut().map(|v| v.as_mut_ptr()).collect();
        // Uneven pieces: vector steps start at odd iterations.
        let cuts = [0, 1, 4, 13, n / 2 + 3, n];
        for w in cuts.windows(2) {
            let (a, b) = (w[0].min(n), w[1].min(n));
            // SAFETY: one pointer per buffer, each as long as compiled for.
            unsafe { c.run_range(ptrs.as_ptr(), a, b) };
        }
        let got: Vec<Vec<u32>> = data
            .iter()
            .map(|v| v.iter().map(|x| x.to_bits()).collect())
            .collect();
        assert!(got == whole, "{}", kernel.name);
    }
}

/// Every loop kernel of every example's training step (and forward pass)
/// gives the same bits on both paths, over the special-value inputs.
#[test]
fn example_training_steps_give_the_cranelift_bits() {
    use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
    // Every native level runs native loop kernels (`zmm` or `ymm` steps).
    let host = IsaLevel::detect().is_some();
    let mut native = 0;
    let examples = common::checked_examples();
    for (name, checked) in &examples {
        for g in &checked.graphs {
            let g = &netc_compiler::masking::instantiate(g, 7).unwrap();
            let c = Compilation::new(g, CompileOptions::at(OptLevel::O1));
            let mut programs = vec![c.program(4).unwrap()];
            if let Some(cfg) = checked.train_for(&g.name) {
                programs.push(c.training_program(cfg, 4).unwrap().program);
            }
            for p in &programs {
                let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
                if lens.iter().sum::<usize>() > 20_000_000 {
                    continue; // alexnet, vgg16: too large to run here
                }
                for kernel in &p.kernels {
                    let KernelBody::Loop(k) = &kernel.body else {
                        continue;
                    };
                    let auto = CompiledLoop::compile_with(k, &lens, KernelPath::Auto).unwrap();
                    if auto.native_isa().is_none() {
                        continue;
                    }
                    let portable =
                        CompiledLoop::compile_with(k, &lens, KernelPath::Cranelift).unwrap();
                    native += 1;
                    assert!(
                        bits(&auto, &lens, 2) == bits(&portable, &lens, 1),
                        "{name}: kernel `{}`",
                        kernel.name
                    );
                }
            }
        }
    }
    println!(
        "{native} AVX2 loop kernels of {} examples agree",
        examples.len()
    );
    assert!(!host || native > 50, "only {native} AVX2 kernels");
}

/// The `zmm` steps (the default on AVX-512 hosts) give the bits of the
/// `ymm` steps and of Cranelift on every loop kernel of the LSTM and GRU
/// training steps at batch 32, their recurrent cells included.
#[test]
fn zmm_loops_give_the_ymm_and_cranelift_bits() {
    use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
    #[cfg(target_arch = "x86_64")]
    let dq = std::arch::is_x86_feature_detected!("avx512dq");
    #[cfg(not(target_arch = "x86_64"))]
    let dq = false;
    if IsaLevel::detect() != Some(IsaLevel::Avx512) || !dq {
        println!("no AVX-512 (F + DQ) on this host: the zmm loop path is not run");
        return;
    }
    let mut zmm = 0;
    for (name, checked) in &common::checked_examples() {
        if !matches!(name.as_str(), "course_lstm.net" | "gru_classifier.net") {
            continue;
        }
        for g in &checked.graphs {
            let Some(cfg) = checked.train_for(&g.name) else {
                continue;
            };
            let g = &netc_compiler::masking::instantiate(g, 7).unwrap();
            let c = Compilation::new(g, CompileOptions::at(OptLevel::O1));
            let p = c.training_program(cfg, 32).unwrap().program;
            let lens: Vec<usize> = p.buffers.iter().map(|b| b.len).collect();
            for kernel in &p.kernels {
                let KernelBody::Loop(k) = &kernel.body else {
                    continue;
                };
                let auto = CompiledLoop::compile_with(k, &lens, KernelPath::Auto).unwrap();
                if auto.native_isa() != Some(IsaLevel::Avx512) {
                    continue;
                }
                // Long nested loops without transcendentals only pay with
                // 16 lanes: the ymm path leaves those to Cranelift.
                let ymm = CompiledLoop::compile_with(k, &lens, KernelPath::Avx2).unwrap();
                assert_ne!(ymm.native_isa(), Some(IsaLevel::Avx512));
                let portable = CompiledLoop::compile_with(k, &lens, KernelPath::Cranelift).unwrap();
                zmm += 1;
                let want = bits(&portable, &lens, 1);
                let kname = format!("{name}: {}", kernel.name);
                same_bits(&kname, KernelPath::Auto, &auto, &want, &lens);
                same_bits(&kname, KernelPath::Avx2, &ymm, &want, &lens);
            }
        }
    }
    println!("{zmm} zmm loop kernels agree with the ymm and Cranelift ones");
    assert!(zmm > 20, "only {zmm} zmm loop kernels");
}
