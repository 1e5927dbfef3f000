//! JIT contraction kernels against a naive f64 reference, on every kernel
//! path the host has: the native AVX-512 kernels (where it has AVX-512F),
//! the native AVX2 ones (where it has AVX2 + FMA; on an AVX-512 host
//! through `KernelPath::Avx2`) and the Cranelift ones (see `check` and
//! `agree_bitwise`). The native paths agree bit for bit everywhere.

use netc_compiler::codegen::cpu::{
    clif_text, BLayout, CodegenError, CompiledContraction, ContractionSpec, Conv2dGeometry,
    Epilogue, IsaLevel, KernelPath, LoopOrder, OptLevel, Tuning,
};

/// Deterministic xorshift values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn act(e: Epilogue, x: f64) -> f64 {
    match e {
        Epilogue::None => x,
        Epilogue::Relu => x.max(0.0),
        Epilogue::LeakyRelu(a) => {
            if x > 0.0 {
                x
            } else {
                f64::from(a) * x
            }
        }
        Epilogue::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Epilogue::Tanh => x.tanh(),
    }
}

fn a_len(s: &ContractionSpec) -> usize {
    let mut max = 0;
    for l in 0..3 {
        max += (s.m_dims[l] - 1) * s.m_strides[l];
    }
    for l in 0..3 {
        max += (s.k_dims[l] - 1) * s.k_strides[l];
    }
    max + 1
}

fn reference(s: &ContractionSpec, a: &[f32], b: &[f32], bias: Option<&[f32]>, c: &mut [f32]) {
    let [m2e, m1e, m0e] = s.m_dims;
    let [k1e, k2e, k3e] = s.k_dims;
    for m2 in 0..m2e {
        for m1 in 0..m1e {
            for m0 in 0..m0e {
                let m = (m2 * m1e + m1) * m0e + m0;
                let abase = m2 * s.m_strides[0] + m1 * s.m_strides[1] + m0 * s.m_strides[2];
                for n in 0..s.n {
                    let mut acc = 0f64;
                    for k1 in 0..k1e {
                        for k2 in 0..k2e {
                            for k3 in 0..k3e {
                                let k = (k1 * k2e + k2) * k3e + k3;
                                let av = a[abase
                                    + k1 * s.k_strides[0]
                                    + k2 * s.k_strides[1]
                                    + k3 * s.k_strides[2]];
                                let bv = if s.b_transposed {
                                    b[n * s.ldb + k]
                                } else {
                                    b[k * s.ldb + n]
                                };
                                acc += f64::from(av) * f64::from(bv);
                            }
                        }
                    }
                    if let Some(bias) = bias {
                        acc += f64::from(bias[n]);
                    }
                    let v = act(s.epilogue, acc);
                    let out = &mut c[m * s.ldc + n];
                    *out = if s.accumulate {
                        (f64::from(*out) + v) as f32
                    } else {
                        v as f32
                    };
                }
            }
        }
    }
}

const SENTINEL: f32 = 12345.0;

/// The native level `spec` compiles to on this host.
fn isa_of(spec: &ContractionSpec) -> Option<IsaLevel> {
    CompiledContraction::compile(spec).unwrap().native_isa()
}

/// The same spec on the other kernel paths this host has, for a spec
/// that got native kernels: the AVX2 ones where it got AVX-512 (a host
/// without AVX-512 has one native level), then Cranelift.
fn other_paths(spec: &ContractionSpec) -> Vec<ContractionSpec> {
    let on = |kernels| {
        let mut twin = spec.clone();
        twin.tuning.kernels = kernels;
        twin
    };
    let mut twins = Vec::new();
    if isa_of(spec) == Some(IsaLevel::Avx512) {
        let avx2 = on(KernelPath::Avx2);
        assert_eq!(isa_of(&avx2), Some(IsaLevel::Avx2Fma), "{spec:?}");
        twins.push(avx2);
    }
    twins.push(on(KernelPath::Cranelift));
    twins
}

/// Runs the JIT kernel and the reference on the same random data and
/// compares every element of C, including the gaps between rows. A spec on
/// [`KernelPath::Auto`] that got native kernels is checked again on the
/// host's other paths ([`other_paths`]): the native ones must agree bit
/// for bit, Cranelift's within rounding.
fn check(spec: &ContractionSpec, threads: usize, seed: u64) {
    let got = check_path(spec, threads, seed);
    if isa_of(spec).is_none() {
        return;
    }
    for twin in other_paths(spec) {
        let theirs = check_path(&twin, threads, seed);
        if isa_of(&twin).is_some() {
            assert_eq!(got, theirs, "AVX-512 vs AVX2\n{spec:?} threads={threads}");
            continue;
        }
        for (i, (&g, &w)) in got.iter().zip(&theirs).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "native vs Cranelift at {i}: {g} vs {w}\n{spec:?} threads={threads}"
            );
        }
    }
}

/// [`check_path`] on `spec` and, where it got native kernels, on every
/// other path of the host ([`other_paths`]): all bit-identical.
fn agree_bitwise(spec: &ContractionSpec, threads: usize, seed: u64, case: &str) {
    let got = check_path(spec, threads, seed);
    if isa_of(spec).is_none() {
        return;
    }
    for twin in other_paths(spec) {
        assert_eq!(
            got,
            check_path(&twin, threads, seed),
            "{case} threads {threads}: {:?} vs {:?}",
            isa_of(spec),
            isa_of(&twin)
        );
    }
}

/// [`check`] on the path `spec` selects; returns the computed C.
fn check_path(spec: &ContractionSpec, threads: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed | 1);
    let m = spec.m().unwrap();
    let a = rng.vec(a_len(spec));
    let b = rng.vec(spec.operand_lens().unwrap().b);
    let bias = spec.bias.then(|| rng.vec(spec.n));
    let c_len = (m - 1) * spec.ldc + spec.n;
    let mut c0 = vec![SENTINEL; c_len];
    if spec.accumulate {
        for (i, x) in c0.iter_mut().enumerate() {
            if i % spec.ldc < spec.n {
                *x = rng.next();
            }
        }
    }
    let mut want = c0.clone();
    reference(spec, &a, &b, bias.as_deref(), &mut want);
    let kernel = CompiledContraction::compile(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    let mut got = c0.clone();
    kernel
        .run(&a, &b, bias.as_deref(), &mut got, threads)
        .unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let tol = 1e-4 * w.abs().max(1.0);
        assert!(
            (g - w).abs() <= tol,
            "mismatch at {i} (row {}, col {}): got {g}, want {w}\n{spec:?} threads={threads}",
            i / spec.ldc,
            i % spec.ldc
        );
    }
    if spec.tuning.b_layout == BLayout::RowMajor {
        assert!(
            kernel.pack_b(&b, 1).is_err(),
            "a row-major kernel packs nothing"
        );
        // Same reduction order as the packed kernel: bit-identical.
        let packed_spec = spec.clone().with_tuning(Tuning {
            b_layout: BLayout::Packed,
            ..spec.tuning
        });
        let packed = CompiledContraction::compile(&packed_spec).unwrap();
        // A packing made for the packed twin is not B for this kernel.
        let pb = packed.pack_b(&b, 1).unwrap();
        let mut scratch = c0.clone();
        assert!(kernel
            .run_packed(&a, &pb, bias.as_deref(), &mut scratch, threads)
            .is_err());
        let mut again = c0;
        packed
            .run(&a, &b, bias.as_deref(), &mut again, threads)
            .unwrap();
        // Same path, same reduction order (a row-major spec the native
        // kernels cannot read would run Cranelift beside a native twin).
        if packed.native_isa() == kernel.native_isa() {
            assert_eq!(got, again, "row-major vs packed B");
        }
        return got;
    }
    // Pre-packed B must give bit-identical results.
    let packed = kernel.pack_b(&b, 1).unwrap();
    // The panels start on a cache line (`PackedB`).
    assert_eq!(packed.as_slice().as_ptr() as usize % 64, 0);
    let mut again = c0;
    kernel
        .run_packed(&a, &packed, bias.as_deref(), &mut again, threads)
        .unwrap();
    assert_eq!(got, again);
    got
}

const SIZES: [usize; 7] = [1, 3, 5, 7, 13, 17, 33];

#[test]
fn dense_all_odd_sizes() {
    let mut seed = 1;
    for &m in &SIZES {
        for &n in &SIZES {
            for &k in &SIZES {
                seed += 1;
                check(
                    &ContractionSpec::dense(m, k, n),
                    1 + (seed as usize % 2),
                    seed,
                );
            }
        }
    }
}

#[test]
fn dense_every_epilogue_bias_accumulate_threads() {
    let epilogues = [
        Epilogue::None,
        Epilogue::Relu,
        Epilogue::LeakyRelu(0.1),
        Epilogue::Sigmoid,
        Epilogue::Tanh,
    ];
    let mut seed = 100;
    for e in epilogues {
        for bias in [false, true] {
            for accumulate in [false, true] {
                for threads in [1, 2] {
                    for (m, k, n) in [(13, 17, 33), (7, 64, 9), (32, 5, 24)] {
                        seed += 1;
                        let spec = ContractionSpec::dense(m, k, n)
                            .with_bias(bias)
                            .with_epilogue(e)
                            .with_accumulate(accumulate);
                        check(&spec, threads, seed);
                    }
                }
            }
        }
    }
}

/// `C = Aᵀ·B`, `A·Bᵀ` and `Aᵀ·Bᵀ` (A stored `[K, M]`, read with rows 1
/// apart and reduction steps M apart; B stored `[N, K]`, transposed by the
/// packing), as weight and input gradients read their operands: odd sizes,
/// edge tiles, bias, `C +=`, one and two threads, both kernel paths.
#[test]
fn transposed_operands_match_the_reference() {
    let mut seed = 500;
    for (m, k, n) in [
        (1, 1, 1),
        (7, 5, 13),
        (13, 17, 33),
        (6, 64, 16),
        (33, 9, 20),
    ] {
        for (a_t, b_t) in [(true, false), (false, true), (true, true)] {
            seed += 1;
            let mut spec = ContractionSpec::dense(m, k, n)
                .with_bias(seed % 2 == 0)
                .with_accumulate(seed % 3 == 0);
            if a_t {
                spec.m_strides = [0, 0, 1];
                spec.k_strides = [0, 0, m + 2]; // a row gap past M
            }
            if b_t {
                spec.ldb = k + 1;
                spec.b_transposed = true;
            }
            check(&spec, 1 + (seed as usize % 2), seed);
        }
    }
    // A transposed B is read through its packing only.
    let mut spec = ContractionSpec::dense(4, 8, 8);
    spec.b_transposed = true;
    spec.ldb = 8;
    let rm = spec.clone().with_tuning(Tuning {
        b_layout: BLayout::RowMajor,
        ..Tuning::default()
    });
    assert!(matches!(
        CompiledContraction::compile(&rm),
        Err(CodegenError::InvalidSpec(_))
    ));
    // Same buffer, ldb and panels, read the other way: not one packing.
    let t = CompiledContraction::compile(&spec).unwrap();
    let plain = CompiledContraction::compile(&ContractionSpec::dense(4, 8, 8)).unwrap();
    assert_ne!(t.packing(), plain.packing());
}

#[test]
fn dense_strided_ld() {
    let mut spec = ContractionSpec::dense(9, 11, 10);
    spec.ldb = 13;
    spec.ldc = 15;
    spec.m_strides[2] = 14; // lda > K
    check(&spec.clone().with_bias(true), 1, 7);
    check(&spec.with_accumulate(true), 2, 8);
}

#[test]
fn activations_are_accurate_over_a_wide_range() {
    // One row, K = 1, B = 1: C = act(A), so A sweeps the activation inputs.
    let n = 1;
    let xs: Vec<f32> = (0..2001).map(|i| (i as f32 - 1000.0) * 0.02).collect();
    for e in [
        Epilogue::Sigmoid,
        Epilogue::Tanh,
        Epilogue::Relu,
        Epilogue::LeakyRelu(0.3),
    ] {
        let spec = ContractionSpec::dense(xs.len(), 1, n).with_epilogue(e);
        let kernel = CompiledContraction::compile(&spec).unwrap();
        let mut c = vec![0f32; xs.len()];
        kernel.run(&xs, &[1.0], None, &mut c, 1).unwrap();
        for (&x, &y) in xs.iter().zip(&c) {
            let want = act(e, f64::from(x));
            let err = (f64::from(y) - want).abs();
            assert!(
                err <= 2e-6 * want.abs().max(1e-3),
                "{e:?}({x}) = {y}, want {want}"
            );
        }
        // Extreme inputs stay finite and saturate.
        let ext = [-1e30f32, -200.0, -88.0, 88.0, 200.0, 1e30];
        let spec = ContractionSpec::dense(ext.len(), 1, 1).with_epilogue(e);
        let kernel = CompiledContraction::compile(&spec).unwrap();
        let mut c = vec![0f32; ext.len()];
        kernel.run(&ext, &[1.0], None, &mut c, 1).unwrap();
        for (&x, &y) in ext.iter().zip(&c) {
            let want = act(e, f64::from(x)) as f32;
            assert!(
                (y - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{e:?}({x}) = {y}, want {want}"
            );
        }
    }
}

fn conv(
    batch: usize,
    hw: (usize, usize),
    in_c: usize,
    kernel: (usize, usize),
    out_c: usize,
    stride: (usize, usize),
) -> ContractionSpec {
    ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
        batch,
        in_h: hw.0,
        in_w: hw.1,
        in_c,
        kernel_h: kernel.0,
        kernel_w: kernel.1,
        out_c,
        stride_h: stride.0,
        stride_w: stride.1,
    })
    .unwrap()
}

#[test]
fn conv_strides_kernels_and_odd_channels() {
    let mut seed = 1000;
    for stride in [1, 2, 3] {
        for (kh, kw) in [(1, 1), (3, 3), (2, 3), (5, 5)] {
            for (ic, oc) in [(1, 1), (3, 5), (7, 13), (16, 8)] {
                for batch in [1, 2] {
                    seed += 1;
                    let spec = conv(batch, (11, 9), ic, (kh, kw), oc, (stride, stride));
                    check(&spec, 1 + seed as usize % 2, seed);
                }
            }
        }
    }
    check(&conv(2, (10, 13), 3, (3, 2), 6, (2, 3)), 2, 5);
}

#[test]
fn conv_with_fused_epilogues() {
    let mut seed = 2000;
    for e in [
        Epilogue::Relu,
        Epilogue::LeakyRelu(0.2),
        Epilogue::Sigmoid,
        Epilogue::Tanh,
    ] {
        for accumulate in [false, true] {
            seed += 1;
            let spec = conv(2, (9, 9), 5, (3, 3), 11, (1, 1))
                .with_bias(true)
                .with_epilogue(e)
                .with_accumulate(accumulate);
            check(&spec, 2, seed);
        }
    }
}

#[test]
fn every_tuning_is_correct() {
    let mut seed = 3000;
    for mr in [1, 2, 3, 4, 5, 6, 7, 8, 11, 16] {
        for nr_vecs in 1..=4 {
            for order in [LoopOrder::Auto, LoopOrder::PanelOuter, LoopOrder::RowOuter] {
                for opt_level in [OptLevel::None, OptLevel::Speed] {
                    seed += 1;
                    let tuning = Tuning {
                        mr,
                        nr_vecs,
                        k_unroll: 1 + seed as usize % 7,
                        opt_level,
                        order,
                        broadcast_per_fma: seed % 2 == 0,
                        // These knobs shape the Cranelift kernels only.
                        kernels: KernelPath::Cranelift,
                        ..Tuning::default()
                    };
                    let dense = ContractionSpec::dense(17, 13, 21)
                        .with_bias(true)
                        .with_epilogue(Epilogue::Relu)
                        .with_tuning(tuning);
                    check(&dense, 2, seed);
                    let c = conv(1, (8, 7), 3, (3, 3), 7, (2, 1)).with_tuning(tuning);
                    check(&c, 1, seed);
                }
            }
        }
    }
}

#[test]
fn row_major_b_matches_the_reference_and_the_packed_kernel() {
    let mut seed = 5000;
    for (mr, nr_vecs) in [(8, 1), (5, 2), (3, 3), (1, 4), (6, 2)] {
        for order in [LoopOrder::PanelOuter, LoopOrder::RowOuter] {
            for threads in [1, 2] {
                seed += 1;
                let tuning = Tuning {
                    mr,
                    nr_vecs,
                    k_unroll: 1 + seed as usize % 9,
                    order,
                    b_layout: BLayout::RowMajor,
                    kernels: KernelPath::Cranelift,
                    ..Tuning::default()
                };
                let nr = 4 * nr_vecs;
                let mut dense = ContractionSpec::dense(19, 21, 3 * nr)
                    .with_bias(true)
                    .with_epilogue(Epilogue::Tanh)
                    .with_tuning(tuning);
                dense.ldb = 3 * nr + 5;
                check(&dense, threads, seed);
                let c = conv(2, (9, 8), 3, (3, 2), 2 * nr, (1, 2)).with_tuning(tuning);
                check(&c, threads, seed);
            }
        }
    }
    // N not a multiple of NR: the last panel would read past a row.
    let odd = ContractionSpec::dense(4, 4, 6).with_tuning(Tuning {
        b_layout: BLayout::RowMajor,
        ..Tuning::default()
    });
    assert!(CompiledContraction::compile(&odd).is_err());
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    assert!(matches!(
        CompiledContraction::compile(&ContractionSpec::dense(0, 3, 3)),
        Err(CodegenError::InvalidSpec(_))
    ));
    assert!(ContractionSpec::dense(3, 0, 3).operand_lens().is_err());
    let mut bad_ld = ContractionSpec::dense(3, 3, 3);
    bad_ld.ldc = 2;
    assert!(CompiledContraction::compile(&bad_ld).is_err());
    let bad_tuning = ContractionSpec::dense(3, 3, 3).with_tuning(Tuning {
        mr: 17,
        ..Tuning::default()
    });
    assert!(CompiledContraction::compile(&bad_tuning).is_err());
    let huge = ContractionSpec::dense(usize::MAX / 2, 3, 3);
    assert!(CompiledContraction::compile(&huge).is_err());
    assert!(ContractionSpec::conv2d_nhwc(&Conv2dGeometry {
        batch: 1,
        in_h: 2,
        in_w: 2,
        in_c: 1,
        kernel_h: 3,
        kernel_w: 3,
        out_c: 1,
        stride_h: 1,
        stride_w: 1,
    })
    .is_err());
    let nan = ContractionSpec::dense(3, 3, 3).with_epilogue(Epilogue::LeakyRelu(f32::NAN));
    assert!(CompiledContraction::compile(&nan).is_err());

    let k = CompiledContraction::compile(&ContractionSpec::dense(4, 5, 6)).unwrap();
    let (a, b, mut c) = (vec![0f32; 20], vec![0f32; 30], vec![0f32; 24]);
    assert!(matches!(
        k.run(&a[..19], &b, None, &mut c, 1),
        Err(CodegenError::BufferTooSmall { name: "a", .. })
    ));
    assert!(matches!(
        k.run(&a, &b[..29], None, &mut c, 1),
        Err(CodegenError::BufferTooSmall { name: "b", .. })
    ));
    assert!(matches!(
        k.run(&a, &b, None, &mut c[..23], 1),
        Err(CodegenError::BufferTooSmall { name: "c", .. })
    ));
    assert!(matches!(
        k.run(&a, &b, Some(&[0.0; 6]), &mut c, 1),
        Err(CodegenError::BiasMismatch { .. })
    ));
    let other = CompiledContraction::compile(&ContractionSpec::dense(4, 6, 6)).unwrap();
    let packed = other.pack_b(&[0.0; 36], 1).unwrap();
    assert!(matches!(
        k.run_packed(&a, &packed, None, &mut c, 1),
        Err(CodegenError::PackedMismatch(_))
    ));
    // Zero threads means one, not a panic.
    k.run(&a, &b, None, &mut c, 0).unwrap();
}

#[test]
fn clif_text_shows_vector_fma_kernel() {
    let text = clif_text(&ContractionSpec::dense(8, 16, 8).with_epilogue(Epilogue::Relu)).unwrap();
    assert!(text.contains("fma"), "{text}");
    assert!(text.contains("splat.f32x4"), "{text}");
    assert!(text.contains("bitselect"), "{text}");
}

/// Whether this host runs native kernels (tests of them pass vacuously
/// elsewhere, where the Cranelift path is all there is).
fn native_host() -> bool {
    IsaLevel::detect().is_some()
}

#[test]
fn native_kernels_are_chosen_where_they_apply() {
    let dense = ContractionSpec::dense(13, 17, 33).with_epilogue(Epilogue::LeakyRelu(0.1));
    let native = CompiledContraction::compile(&dense).unwrap();
    assert_eq!(native.native_isa(), IsaLevel::detect());
    if native_host() {
        // The native tile is 16 columns wide, so B packs into 16-column panels.
        assert_eq!(native.packing(), (17, 33, 16, false));
    }
    let mut forced = dense.clone();
    forced.tuning.kernels = KernelPath::Cranelift;
    let forced = CompiledContraction::compile(&forced).unwrap();
    assert_eq!(forced.native_isa(), None);
    assert_eq!(forced.packing(), (17, 33, 4, false));
    // Sigmoid and tanh stay on Cranelift, which has their polynomials.
    for e in [Epilogue::Sigmoid, Epilogue::Tanh] {
        let k = CompiledContraction::compile(&dense.clone().with_epilogue(e)).unwrap();
        assert_eq!(k.native_isa(), None, "{e:?}");
    }
    // Row-major B with N not a multiple of 16: Cranelift reads it.
    let mut rm = ContractionSpec::dense(9, 8, 20);
    rm.tuning.b_layout = BLayout::RowMajor;
    assert_eq!(
        CompiledContraction::compile(&rm).unwrap().native_isa(),
        None
    );
    rm.n = 32;
    rm.ldb = 32;
    rm.ldc = 32;
    assert_eq!(
        CompiledContraction::compile(&rm).unwrap().native_isa(),
        IsaLevel::detect()
    );
}

/// Edge tiles in both directions (M and N around multiples of 6 and 16),
/// short and unroll-odd K, every fused epilogue, bias and `C +=`.
#[test]
fn native_kernels_match_the_reference_on_edge_tiles() {
    let mut seed = 7000;
    for (m, k, n) in [
        (1, 1, 1),
        (5, 3, 15),
        (6, 8, 16),
        (7, 9, 17),
        (12, 31, 32),
        (13, 64, 47),
        (25, 100, 65),
    ] {
        for (bias, e, accumulate) in [
            (false, Epilogue::None, false),
            (true, Epilogue::Relu, false),
            (true, Epilogue::LeakyRelu(0.25), true),
            (false, Epilogue::Relu, true),
        ] {
            seed += 1;
            let mut spec = ContractionSpec::dense(m, k, n)
                .with_bias(bias)
                .with_epilogue(e)
                .with_accumulate(accumulate);
            spec.tuning.k_unroll = 1 + seed as usize % 8;
            check(&spec, 1 + seed as usize % 2, seed);
        }
    }
}

/// Strided, batched convolution rows (the row decomposition walks three
/// digits), the `kh` reduction level outside the contiguous run, and
/// `ldc > N`.
#[test]
fn native_kernels_match_the_reference_on_strided_convs_and_layouts() {
    let mut seed = 7100;
    for (stride, (kh, kw), (ic, oc)) in [
        ((1, 1), (3, 3), (5, 16)),
        ((2, 2), (3, 3), (7, 19)),
        ((1, 2), (5, 2), (16, 33)),
        ((3, 1), (1, 1), (3, 8)),
    ] {
        for threads in [1, 2] {
            seed += 1;
            let spec = conv(2, (11, 10), ic, (kh, kw), oc, stride)
                .with_bias(true)
                .with_epilogue(Epilogue::Relu)
                .with_accumulate(seed % 2 == 0);
            check(&spec, threads, seed);
        }
    }
    // Two reduction levels outside the run (no dimension continues the
    // next), rows of A further apart than K.
    let mut spec = ContractionSpec::dense(14, 30, 21).with_bias(true);
    spec.k_dims = [2, 3, 5];
    spec.k_strides = [40, 11, 1];
    spec.m_strides = [0, 0, 90];
    spec.ldc = 23;
    check(&spec, 2, 7200);
    // Row-major B read in place, `ldb > N`.
    let mut spec = ContractionSpec::dense(19, 21, 48).with_epilogue(Epilogue::LeakyRelu(0.5));
    spec.ldb = 53;
    spec.tuning.b_layout = BLayout::RowMajor;
    check(&spec, 2, 7201);
    let mut c = conv(2, (9, 8), 3, (3, 2), 32, (1, 2));
    c.tuning.b_layout = BLayout::RowMajor;
    check(&c, 1, 7202);
}

/// Reductions longer than a block (`blocking`): long contiguous runs split
/// evenly (with and without a shorter last run), flushes after an outer
/// level, after the inner of two levels, with bias, ReLU and `C +=`, and a
/// strided (transposed) A run split into blocks. The
/// native and Cranelift kernels flush at the same points in the same
/// order, so they agree bit for bit.
#[test]
fn blocked_reductions_match_the_reference_and_agree_bitwise() {
    let mut cases = vec![
        ContractionSpec::dense(7, 25_088, 17),
        ContractionSpec::dense(13, 514, 33)
            .with_bias(true)
            .with_epilogue(Epilogue::Relu)
            .with_accumulate(true),
        // kh outside a run of kw x c = 3 x 64: flushed after every kh.
        conv(1, (6, 6), 64, (3, 3), 16, (1, 1)).with_bias(true),
    ];
    // Two levels outside a run of 64; the inner level's body is a block.
    let mut two = ContractionSpec::dense(6, 1600, 16);
    two.k_dims = [5, 5, 64];
    two.k_strides = [400, 70, 1];
    two.m_strides = [0, 0, 2000];
    cases.push(two);
    // A transposed A (a weight gradient's xᵀ) with a long, strided run,
    // and a transposed B.
    let mut at = ContractionSpec::dense(9, 700, 20).with_bias(true);
    at.m_strides = [0, 0, 1];
    at.k_strides = [0, 0, 11];
    at.ldb = 701;
    at.b_transposed = true;
    cases.push(at);
    for (i, spec) in cases.iter().enumerate() {
        for threads in [1, 2] {
            agree_bitwise(spec, threads, 7300 + i as u64, &format!("case {i}"));
        }
    }
}

/// A small transposed A read by many panels (an LSTM's `Hᵀ · dZ` over all
/// steps) is copied row-major before the native kernels run; the copy
/// changes no addition, so the result is the Cranelift kernel's (which
/// reads A in place) bit for bit. A large one is read in place.
#[test]
fn a_small_transposed_a_is_copied_and_agrees_bitwise() {
    let case = |m, k, n, lda| {
        let mut s = ContractionSpec::dense(m, k, n);
        (s.m_strides, s.k_strides) = ([0, 0, 1], [0, 0, lda]);
        s
    };
    let mut cases = vec![
        // The course LSTM's merged recurrent-weight gradient: K blocked.
        (case(128, 288, 512, 256), true),
        (
            case(20, 40, 64, 23).with_bias(true).with_accumulate(true),
            true,
        ),
        // Too few panels to repay the copy, and too large an A.
        (case(20, 40, 48, 23), false),
        (case(700, 100, 64, 700), false),
    ];
    let mut bt = case(13, 33, 80, 16).with_epilogue(Epilogue::Relu);
    (bt.ldb, bt.b_transposed) = (35, true);
    cases.push((bt, true));
    let mut rm = case(30, 50, 128, 31);
    rm.tuning.b_layout = BLayout::RowMajor;
    cases.push((rm, true));
    for (i, (spec, copied)) in cases.iter().enumerate() {
        let kernel = CompiledContraction::compile(spec).unwrap();
        if kernel.native_isa().is_none() {
            return;
        }
        assert_eq!(kernel.copies_a(), *copied, "case {i}");
        for threads in [1, 2] {
            let seed = 7700 + i as u64;
            let got = check_path(spec, threads, seed);
            let mut twin = spec.clone();
            twin.tuning.kernels = KernelPath::Cranelift;
            assert!(!CompiledContraction::compile(&twin).unwrap().copies_a());
            assert_eq!(got, check_path(&twin, threads, seed), "case {i}");
        }
    }
}

/// A blocked reduction is markedly more accurate than one float32 chain:
/// 65,536 positive products (a sum near 16,000, where the chain's rounding
/// errors all push one way) against an f64 reference.
#[test]
fn blocked_reductions_are_more_accurate_than_one_chain() {
    let (m, k, n) = (6, 65_536, 16);
    let mut rng = Rng(99);
    let mut pos = |len: usize| -> Vec<f32> { (0..len).map(|_| 0.5 * rng.next() + 0.5).collect() };
    let (a, b) = (pos(m * k), pos(k * n));
    for kernels in [KernelPath::Auto, KernelPath::Cranelift] {
        let mut spec = ContractionSpec::dense(m, k, n);
        spec.tuning.kernels = kernels;
        let kernel = CompiledContraction::compile(&spec).unwrap();
        let mut c = vec![0.0; m * n];
        kernel.run(&a, &b, None, &mut c, 1).unwrap();
        let (mut blocked, mut chain) = (0f64, 0f64);
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                    .sum();
                let one_chain = (0..k).fold(0f32, |s, p| a[i * k + p].mul_add(b[p * n + j], s));
                blocked = blocked.max((f64::from(c[i * n + j]) - exact).abs() / exact);
                chain = chain.max((f64::from(one_chain) - exact).abs() / exact);
            }
        }
        eprintln!("{kernels:?}: max relative error blocked {blocked:.2e}, one chain {chain:.2e}");
        assert!(
            blocked < 1e-6 && blocked * 8.0 < chain,
            "{kernels:?}: {blocked:e} vs {chain:e}"
        );
    }
}

/// Panel-outer runs handed an unpacked, transposed B pack it one panel at
/// a time as the loop nest reaches it (a partial last panel, a blocked
/// reduction, panels split over threads): the same values as packing all
/// of B first, bit for bit, and as the Cranelift kernels. A short
/// row-major B keeps the whole packing.
#[test]
fn per_panel_packing_matches_the_whole_packing() {
    for (i, (m, k, n)) in [(13, 40, 50), (64, 300, 48), (7, 9, 16), (20, 128, 75)]
        .into_iter()
        .enumerate()
    {
        let mut spec = ContractionSpec::dense(m, k, n).with_epilogue(Epilogue::Relu);
        (spec.ldb, spec.b_transposed) = (k + 3, true);
        spec.tuning.order = LoopOrder::PanelOuter;
        let kernel = CompiledContraction::compile(&spec).unwrap();
        let plain = ContractionSpec::dense(m, k, n).with_tuning(spec.tuning);
        assert!(!CompiledContraction::compile(&plain)
            .unwrap()
            .packs_per_panel(1));
        for threads in [1, 2, 3] {
            if native_host() {
                assert!(kernel.packs_per_panel(1), "case {i}");
            }
            // `check_path` compares `run` (packing per panel here) with
            // `run_packed` bit for bit, and both with the reference.
            let mut twin = spec.clone();
            twin.tuning.kernels = KernelPath::Cranelift;
            assert!(!CompiledContraction::compile(&twin)
                .unwrap()
                .packs_per_panel(1));
            agree_bitwise(&spec, threads, 8100 + i as u64, &format!("case {i}"));
        }
    }
}

/// Long contiguous reductions whose row-major B is packed by the run
/// itself walk the reduction blocks outermost, C carrying the running
/// totals between blocks: equal blocks and a shorter last one, bias and
/// the fused activations, a transposed A, edge rows, several groups of
/// panels and chunks of rows, 1 to 3 threads. Bit-identical to packing
/// B first (`check_path`) and to the Cranelift kernels, which keep the
/// totals in registers.
#[test]
fn reduction_block_outer_runs_match_the_reference_and_agree_bitwise() {
    let mut cases = vec![
        ContractionSpec::dense(64, 2600, 128).with_bias(true),
        ContractionSpec::dense(13, 2304, 32).with_epilogue(Epilogue::Relu),
        ContractionSpec::dense(150, 2100, 256)
            .with_bias(true)
            .with_epilogue(Epilogue::LeakyRelu(0.2)),
    ];
    let mut at = ContractionSpec::dense(11, 2200, 48).with_bias(true);
    (at.m_strides, at.k_strides) = ([0, 0, 1], [0, 0, 13]);
    cases.push(at);
    for (i, mut spec) in cases.into_iter().enumerate() {
        spec.tuning.order = LoopOrder::PanelOuter;
        let kernel = CompiledContraction::compile(&spec).unwrap();
        if native_host() {
            // For a row-major B, only the block-outer nest packs in the run.
            assert!(kernel.packs_per_panel(1), "case {i}");
        }
        for threads in [1, 2, 3] {
            agree_bitwise(&spec, threads, 8300 + i as u64, &format!("case {i}"));
        }
    }
}

/// A long reduction over several row tiles whose row-major B is read in
/// place also walks the reduction blocks outermost (B streamed once, not
/// once per row tile): the conv weight gradient's shape (9 rows, N = 32),
/// edge rows, bias and the fused activations, a transposed A, equal and
/// shorter last blocks, 1 to 3 threads. Bit-identical to the packed twin
/// (`check_path`) and to the Cranelift kernels.
#[test]
fn row_major_block_outer_runs_match_the_reference_and_agree_bitwise() {
    let mut cases = vec![
        ContractionSpec::dense(9, 4352, 32),
        ContractionSpec::dense(13, 2600, 48)
            .with_bias(true)
            .with_epilogue(Epilogue::Relu),
        ContractionSpec::dense(20, 2100, 16).with_epilogue(Epilogue::LeakyRelu(0.1)),
    ];
    let mut at = ContractionSpec::dense(11, 2200, 32).with_bias(true);
    (at.m_strides, at.k_strides) = ([0, 0, 1], [0, 0, 13]);
    cases.push(at);
    for (i, mut spec) in cases.into_iter().enumerate() {
        spec.tuning.b_layout = BLayout::RowMajor;
        for threads in [1, 2, 3] {
            agree_bitwise(&spec, threads, 8400 + i as u64, &format!("case {i}"));
        }
    }
}

/// Row-outer sweeps compute all full panels of a row tile in one
/// micro-kernel call: a weight gradient's shape (transposed A, short K,
/// B read row-major or packed), with and without a partial last panel,
/// bias, `C +=` and a blocked reduction, rows or panels split over 1 to 3
/// threads (so a thread's panels may start past the first), bit-identical
/// to the Cranelift kernels.
#[test]
fn multi_panel_row_outer_calls_match_the_reference() {
    let mut cases = Vec::new();
    for (m, k, n, row_major) in [
        (200, 64, 128, true),
        (200, 64, 128, false),
        (31, 40, 88, false),
        (25, 300, 80, true),
    ] {
        let mut s = ContractionSpec::dense(m, k, n).with_bias(n != 128);
        (s.m_strides, s.k_strides) = ([0, 0, 1], [0, 0, m + 3]);
        s.tuning.order = LoopOrder::RowOuter;
        if row_major {
            s.tuning.b_layout = BLayout::RowMajor;
        }
        cases.push(s.clone().with_accumulate(n == 80));
        cases.push(s);
    }
    for (i, spec) in cases.iter().enumerate() {
        for threads in [1, 2, 3] {
            agree_bitwise(spec, threads, 8500 + i as u64, &format!("case {i}"));
        }
    }
}

/// Whether this host has the AVX-512 kernels; prints why a test of them
/// passes vacuously where it does not.
fn avx512_host(test: &str) -> bool {
    let yes = IsaLevel::detect() == Some(IsaLevel::Avx512);
    if !yes {
        eprintln!(
            "{test}: skipped, this host has no AVX-512F ({:?})",
            IsaLevel::detect()
        );
    }
    yes
}

/// The levels are ordered, `Auto` takes the host's best, `Avx2` stops at
/// the `ymm` kernels, Cranelift takes none.
#[test]
fn kernel_paths_pick_their_levels() {
    let spec = ContractionSpec::dense(13, 17, 33);
    let on = |kernels| {
        isa_of(&spec.clone().with_tuning(Tuning {
            kernels,
            ..spec.tuning
        }))
    };
    assert!(IsaLevel::Avx2Fma < IsaLevel::Avx512);
    assert_eq!(on(KernelPath::Auto), IsaLevel::detect());
    assert_eq!(on(KernelPath::Cranelift), None);
    assert_eq!(
        on(KernelPath::Avx2),
        IsaLevel::detect().map(|_| IsaLevel::Avx2Fma)
    );
    assert_eq!(KernelPath::Cranelift.native_level(), None);
    if avx512_host("kernel_paths_pick_their_levels") {
        assert_eq!(on(KernelPath::Auto), Some(IsaLevel::Avx512));
    }
}

/// The `zmm` kernels' pairs of panels: odd and even panel counts, a
/// partial last panel (scratch tile), tile heights 1 to 6 and runs of
/// several row tiles, both loop orders, bias, ReLU, leaky ReLU (negative
/// zeros included), `C +=`, a transposed A and B, B read in place,
/// blocked reductions (stack-tile flushes and block kernels), an
/// implicit-GEMM convolution with outer reduction levels, one and two
/// threads: bit-identical on every path of the host.
#[test]
fn paired_panels_agree_bitwise_on_every_path() {
    avx512_host("paired_panels_agree_bitwise_on_every_path");
    let mut seed = 9000;
    let epilogues = [
        (false, Epilogue::None, false),
        (true, Epilogue::Relu, false),
        (true, Epilogue::LeakyRelu(0.3), true),
        (false, Epilogue::LeakyRelu(0.05), false),
        (true, Epilogue::None, true),
    ];
    for n in [16, 32, 48, 64, 80, 40, 57, 112] {
        for m in [1, 2, 3, 4, 5, 6, 13, 100] {
            for order in [LoopOrder::PanelOuter, LoopOrder::RowOuter] {
                seed += 1;
                let (bias, e, acc) = epilogues[seed as usize % epilogues.len()];
                let mut spec = ContractionSpec::dense(m, 1 + seed as usize % 40, n)
                    .with_bias(bias)
                    .with_epilogue(e)
                    .with_accumulate(acc);
                spec.tuning.order = order;
                spec.tuning.k_unroll = 1 + seed as usize % 8;
                agree_bitwise(&spec, 1 + seed as usize % 2, seed, &format!("{spec:?}"));
                // B read in place (N a multiple of 16).
                if n % 16 == 0 {
                    spec.tuning.b_layout = BLayout::RowMajor;
                    spec.ldb = n + 16;
                    agree_bitwise(&spec, 2, seed, &format!("{spec:?}"));
                }
            }
        }
    }
    // Transposed A and B (per-panel packing of pairs), odd and even
    // panel counts, a partial last panel.
    for (m, k, n) in [(37, 50, 96), (37, 50, 80), (19, 33, 70), (64, 300, 48)] {
        for (a_t, b_t) in [(true, false), (false, true), (true, true)] {
            seed += 1;
            let mut spec = ContractionSpec::dense(m, k, n)
                .with_bias(seed % 2 == 0)
                .with_epilogue(Epilogue::LeakyRelu(0.1))
                .with_accumulate(seed % 3 == 0);
            spec.tuning.order = LoopOrder::PanelOuter;
            if a_t {
                (spec.m_strides, spec.k_strides) = ([0, 0, 1], [0, 0, m + 5]);
            }
            if b_t {
                (spec.ldb, spec.b_transposed) = (k + 1, true);
            }
            for threads in [1, 2] {
                agree_bitwise(&spec, threads, seed, &format!("{spec:?}"));
            }
        }
    }
    // Blocked reductions: flushes of an inner run, after an outer level
    // (a convolution), block kernels of a long row-major B (packed in the
    // run, and read in place).
    let mut blocked = vec![
        ContractionSpec::dense(13, 700, 80).with_bias(true),
        ContractionSpec::dense(7, 600, 96)
            .with_epilogue(Epilogue::Relu)
            .with_accumulate(true),
        conv(2, (9, 9), 40, (3, 3), 48, (1, 1))
            .with_bias(true)
            .with_epilogue(Epilogue::LeakyRelu(0.2)),
        conv(1, (10, 9), 7, (5, 5), 35, (2, 1)).with_accumulate(true),
    ];
    let mut long = ContractionSpec::dense(20, 2600, 64).with_bias(true);
    long.tuning.order = LoopOrder::PanelOuter;
    blocked.push(long.clone());
    long.tuning.b_layout = BLayout::RowMajor;
    blocked.push(long);
    for (i, spec) in blocked.iter().enumerate() {
        for threads in [1, 2] {
            agree_bitwise(spec, threads, 9500 + i as u64, &format!("blocked case {i}"));
        }
    }
}

/// Panels too far apart for the `zmm` kernels' displacements (panel `j`
/// of a four-panel tile is `3 * b_panel` bytes on, past `i32` at this K)
/// fall back to the AVX2 kernels, not to Cranelift. Compiled only: the
/// operands would take gigabytes.
#[test]
fn far_apart_panels_fall_back_to_the_avx2_kernels() {
    let spec = ContractionSpec::dense(1, 12_000_000, 64);
    assert_eq!(isa_of(&spec), IsaLevel::detect().map(|_| IsaLevel::Avx2Fma));
    let near = ContractionSpec::dense(1, 1_000_000, 64);
    assert_eq!(isa_of(&near), IsaLevel::detect());
}
