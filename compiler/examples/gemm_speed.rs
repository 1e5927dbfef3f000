//! Times the contraction kernels against the measured 128-, 256- and
//! 512-bit FMA ceilings.  Run with `cargo run --release -p netc-compiler
//! --example gemm_speed -- [--kernels auto|avx2|cranelift] [--mr N]
//! [--nrv N] [--unroll N] [--opt none|speed] [--order auto|panel|row]
//! [--bcast fma|row] [--only conv1|conv8|dense|fc1|fc1_dx|fc1_dw|lstm|lstm_dw|...]
//! [--disasm]` (`--mr`, `--nrv`, `--opt`, `--bcast` shape the Cranelift
//! kernels only; `--kernels avx2` keeps the `ymm` kernels on an AVX-512
//! host).

use std::time::{Duration, Instant};

use netc_compiler::codegen::cpu::{
    contraction::disassembly, measure_fma256_ceiling_gflops, measure_fma512_ceiling_gflops,
    measure_fma_ceiling_gflops, BLayout, CompiledContraction, ContractionSpec, Conv2dGeometry,
    KernelPath, LoopOrder, OptLevel, Tuning,
};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// (busy, total) jiffies over all CPUs, from /proc/stat (Linux only).
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Waits (up to a minute) until the machine has been idle for 300 ms, so
/// other processes (e.g. a concurrent cargo build) do not skew timings.
fn wait_idle() {
    // `NETC_NO_WAIT=1`: on a machine that is never idle, time right away
    // (best-of timings then catch the quiet moments).
    if std::env::var_os("NETC_NO_WAIT").is_some() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some((b0, t0)) = cpu_jiffies() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(300));
        let Some((b1, t1)) = cpu_jiffies() else {
            return;
        };
        if t1 > t0 && ((b1 - b0) as f64) < 0.05 * (t1 - t0) as f64 {
            return;
        }
    }
    eprintln!("warning: machine still busy, timing anyway");
}

/// Best time of repeated calls over at least `budget`.
fn best_time(budget: Duration, mut f: impl FnMut()) -> f64 {
    wait_idle();
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut reps = 0;
    while reps < 3 || start.elapsed() < budget {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut tuning = Tuning::default();
    if let Some(v) = arg(&args, "--mr") {
        tuning.mr = v.parse()?;
    }
    if let Some(v) = arg(&args, "--nrv") {
        tuning.nr_vecs = v.parse()?;
    }
    if let Some(v) = arg(&args, "--unroll") {
        tuning.k_unroll = v.parse()?;
    }
    if let Some(v) = arg(&args, "--opt") {
        tuning.opt_level = if v == "speed" {
            OptLevel::Speed
        } else {
            OptLevel::None
        };
    }
    if let Some(v) = arg(&args, "--bcast") {
        tuning.broadcast_per_fma = v == "fma";
    }
    if let Some(v) = arg(&args, "--kernels") {
        tuning.kernels = match v.as_str() {
            "cranelift" => KernelPath::Cranelift,
            "avx2" => KernelPath::Avx2,
            _ => KernelPath::Auto,
        };
    }
    let order_override = arg(&args, "--order").map(|v| match v.as_str() {
        "row" => LoopOrder::RowOuter,
        "panel" => LoopOrder::PanelOuter,
        _ => LoopOrder::Auto,
    });
    let only = arg(&args, "--only");

    let disasm_only = args.iter().any(|a| a == "--disasm");
    let (ceil1, ceil2) = if disasm_only {
        (1.0, 1.0)
    } else {
        (
            measure_fma_ceiling_gflops(1)?,
            measure_fma_ceiling_gflops(2)?,
        )
    };
    println!("FMA ceiling (f32x4): 1 thread {ceil1:.1} GFLOP/s, 2 threads {ceil2:.1} GFLOP/s");
    // The widest FMA the core has: what the native kernels are held to.
    let wide1 = if disasm_only {
        None
    } else {
        measure_fma256_ceiling_gflops(1)
    };
    if let Some(w) = wide1 {
        println!("FMA ceiling (ymm, 256-bit): 1 thread {w:.1} GFLOP/s");
    }
    let wide1 = wide1.unwrap_or(ceil1);
    let (z1, z2) = if disasm_only {
        (None, None)
    } else {
        (
            measure_fma512_ceiling_gflops(1),
            measure_fma512_ceiling_gflops(2),
        )
    };
    if let (Some(a), Some(b)) = (z1, z2) {
        println!("FMA ceiling (zmm, 512-bit): 1 thread {a:.1} GFLOP/s, 2 threads {b:.1} GFLOP/s");
    }
    // Fractions of the 512-bit ceiling at the same thread count, where
    // the machine has one.
    let zmm = [z1, z2];
    println!("tuning: {tuning:?} (order override {order_override:?})");

    let conv = |batch| {
        ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
            batch,
            in_h: 58,
            in_w: 58,
            in_c: 64,
            kernel_h: 3,
            kernel_w: 3,
            out_c: 64,
            stride_h: 1,
            stride_w: 1,
        })
    };
    if args.iter().any(|a| a == "--sweep") {
        return sweep(&args, ceil1, &conv(1)?, &conv(8)?);
    }
    let cases = [
        ("conv1", conv(1)?),
        ("conv8", conv(8)?),
        ("dense", ContractionSpec::dense(64, 1024, 1024)),
        // The course CNN's fc1 products (batch 64): the forward x·W, the
        // input gradient dy·Wᵀ (B transposed) and the weight gradient
        // xᵀ·dy (A transposed, the temporary dy read in place, as the
        // executor compiles it).
        ("fc1", ContractionSpec::dense(64, 5408, 128)),
        ("fc1_dx", {
            let mut s = ContractionSpec::dense(64, 128, 5408);
            (s.ldb, s.b_transposed) = (128, true);
            s
        }),
        ("fc1_dw", {
            let mut s = ContractionSpec::dense(5408, 64, 128);
            (s.m_strides, s.k_strides) = ([0, 0, 1], [0, 0, 5408]);
            s
        }),
        // The course CNN's conv1 (batch 64, 28 × 28 × 1 → 26 × 26 × 32).
        (
            "conv1_fwd",
            ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
                batch: 64,
                in_h: 28,
                in_w: 28,
                in_c: 1,
                kernel_h: 3,
                kernel_w: 3,
                out_c: 32,
                stride_h: 1,
                stride_w: 1,
            })?,
        ),
        // The same product with A as a dense im2col (no outer reduction
        // levels): what the conv's reduction loop nest costs.
        ("conv1_fwd_dense", ContractionSpec::dense(43264, 9, 32)),
        ("conv1_fwd_l2", ContractionSpec::dense(2048, 9, 32)),
        // The course CNN's conv1 weight gradient (batch 64): im2col(x)ᵀ
        // (9 × 43,264) times the conv output's gradient, read in place.
        ("conv1_dw", ContractionSpec::dense(9, 43264, 32)),
        // B (two panels, 16 KiB) resident in L1 across the row tiles:
        // the kernels' own ceiling, without the L2 traffic of B.
        ("dense_l1", {
            let mut s = ContractionSpec::dense(3000, 128, 32);
            s.tuning.order = LoopOrder::RowOuter;
            s
        }),
        // LSTM-shaped: the gate product of a step (batch 32, hidden 128,
        // four gates of 128), B packed, row-outer; and a weight gradient
        // over a transposed A (xᵀ stored [288, 256] read in place).
        ("lstm", {
            let mut s = ContractionSpec::dense(32, 128, 512);
            s.tuning.order = LoopOrder::RowOuter;
            s
        }),
        ("lstm_dw", {
            let mut s = ContractionSpec::dense(128, 288, 512);
            (s.m_strides, s.k_strides, s.ldb) = ([0, 0, 1], [0, 0, 256], 512);
            s
        }),
    ];
    for (name, spec) in cases {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut t = tuning;
        t.order = spec.tuning.order;
        if let Some(o) = order_override {
            t.order = o;
        }
        if (name == "fc1_dw" || name == "conv1_dw") && !args.iter().any(|a| a == "--dw-packed") {
            t.b_layout = BLayout::RowMajor;
        }
        let spec = spec.with_tuning(t);
        if disasm_only {
            println!("{}", disassembly(&spec)?);
            continue;
        }
        let kernel = CompiledContraction::compile(&spec)?;
        let m = spec.m().unwrap_or(0);
        let k = spec.k().unwrap_or(0);
        let lens = spec.operand_lens()?;
        let a: Vec<f32> = (0..lens.a).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let b: Vec<f32> = (0..lens.b).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
        let mut c = vec![0f32; lens.c];
        let in_place = spec.tuning.b_layout == BLayout::RowMajor;
        let packed = if in_place {
            None
        } else {
            Some(kernel.pack_b(&b, 1)?)
        };
        let budget = Duration::from_millis(700);
        let flops = spec.flops();
        let path = match kernel.native_isa() {
            Some(isa) => format!("{isa:?}"),
            None => "Cranelift".into(),
        };
        let mut line = format!("{name:6} M={m:6} N={:5} K={k:5} [{path}]", spec.n);
        let mut one = 0.0;
        for threads in [1, 2] {
            let tp = best_time(budget, || match &packed {
                Some(packed) => kernel
                    .run_packed(&a, packed, None, &mut c, threads)
                    .expect("run_packed"),
                None => kernel.run(&a, &b, None, &mut c, threads).expect("run"),
            });
            let tr = best_time(budget, || {
                kernel.run(&a, &b, None, &mut c, threads).expect("run")
            });
            let gp = flops / tp / 1e9;
            let gr = flops / tr / 1e9;
            if threads == 1 {
                one = gp;
            }
            let of_zmm = match zmm[threads - 1] {
                Some(z) => format!(", {:.2}x ceil512 {threads}T", gp / z),
                None => String::new(),
            };
            line += &format!(
                " | {threads}T packed {gp:6.1} GF/s ({:.2}x ceil128, {:.2}x ceil256 1T{of_zmm}{}) with-pack {gr:6.1}",
                gp / ceil1,
                gp / wide1,
                if threads == 2 {
                    format!(", {:.2}x of 1T", gp / one)
                } else {
                    String::new()
                }
            );
        }
        println!("{line}");
    }
    if !disasm_only {
        // A drop here means something else competed for the CPU meanwhile.
        wait_idle();
        println!(
            "FMA ceiling re-measured after the runs: 1 thread {:.1} GFLOP/s",
            measure_fma_ceiling_gflops(1)?
        );
    }
    Ok(())
}

/// One-thread GFLOP/s of pre-packed runs over a grid of tunings.
fn sweep(
    args: &[String],
    ceil1: f64,
    conv1: &ContractionSpec,
    conv8: &ContractionSpec,
) -> Result<(), Box<dyn std::error::Error>> {
    let dense = ContractionSpec::dense(64, 1024, 1024);
    let shapes: Vec<(usize, usize)> = arg(args, "--shapes")
        .unwrap_or_else(|| "6x2,5x2,4x2,4x3,3x3,8x1,3x4,2x4".into())
        .split(',')
        .filter_map(|s| {
            let (a, b) = s.split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    let unrolls: Vec<usize> = arg(args, "--unrolls")
        .unwrap_or_else(|| "4".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let opts: Vec<OptLevel> = match arg(args, "--opts").as_deref() {
        Some("none") => vec![OptLevel::None],
        _ => vec![OptLevel::None, OptLevel::Speed],
    };
    for (mr, nr_vecs) in shapes {
        for &opt_level in &opts {
            for order in [LoopOrder::PanelOuter, LoopOrder::RowOuter] {
                for &k_unroll in &unrolls {
                    let tuning = Tuning {
                        mr,
                        nr_vecs,
                        opt_level,
                        order,
                        k_unroll,
                        ..Tuning::default()
                    };
                    let mut line = format!("{mr}x{nr_vecs} u{k_unroll} {opt_level:?} {order:?}:");
                    for (name, spec) in [("conv1", conv1), ("conv8", conv8), ("dense", &dense)] {
                        let spec = spec.clone().with_tuning(tuning);
                        let kernel = CompiledContraction::compile(&spec)?;
                        let lens = spec.operand_lens()?;
                        let a = vec![0.5f32; lens.a];
                        let b = vec![0.25f32; lens.b];
                        let mut c = vec![0f32; lens.c];
                        let packed = kernel.pack_b(&b, 1)?;
                        let t = best_time(Duration::from_millis(250), || {
                            kernel
                                .run_packed(&a, &packed, None, &mut c, 1)
                                .expect("run")
                        });
                        let g = spec.flops() / t / 1e9;
                        line += &format!(" {name} {g:5.1} ({:.2})", g / ceil1);
                    }
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}
