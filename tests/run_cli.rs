//! `netc init` / `netc run` end to end: the golden cases of the lecture
//! notes (docs/golden.md items 1–6) through the CLI with compiled
//! kernels, the course CNN at batch 64 against the interpreter, and the
//! errors users get for bad weights and inputs.

mod common;
use common::*;
use netc_compiler::kernel::{interp, BufKind};
use netc_compiler::pipeline::{Compilation, CompileOptions, OptLevel};
use netc_runtime::{read_npy, write_npy, Tensor, Weights};

/// A fresh directory for one test, removed when the test ends.
fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Writes `src`, the weights and the input, runs `netc run`, returns the output.
fn run_golden(
    tag: &str,
    src: &str,
    shape: &[usize],
    input: Vec<f32>,
    params: &[(&str, Vec<usize>, Vec<f32>)],
) -> Vec<f32> {
    let dir = tmpdir();
    let tmp = |name: &str| dir.path().join(name);
    let net = tmp(&format!("{tag}.net"));
    std::fs::write(&net, src).unwrap();
    let mut w = Weights::new("m");
    for (name, shape, data) in params {
        w.insert(*name, Tensor::new(shape.clone(), data.clone()).unwrap());
    }
    let wpath = tmp(&format!("{tag}.safetensors"));
    w.save(&wpath).unwrap();
    let x = tmp(&format!("{tag}.x.npy"));
    write_npy(&x, &Tensor::new(shape.to_vec(), input).unwrap()).unwrap();
    let y = tmp(&format!("{tag}.y.npy"));
    let (code, _, err) = netc(&[
        "run",
        net.to_str().unwrap(),
        "--weights",
        wpath.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "--output",
        y.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    read_npy(&y).unwrap().data
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{got:?} vs {want:?}");
    }
}

fn conv_src(h: usize, w: usize, k: usize, bias: bool) -> String {
    format!("model m {{ input x: [{h}, {w}, 1]  x -> conv2d(1, {k}, bias: {bias}) as c -> y  output y }}")
}

#[test]
fn golden_convolutions_through_netc_run() {
    let image = vec![
        1., 1., 1., 0., 0., 0., 1., 1., 1., 0., 0., 0., 1., 1., 1., 0., 0., 1., 1., 0., 0., 1., 1.,
        0., 0.,
    ];
    let filt = vec![1., 0., 1., 0., 1., 0., 1., 0., 1.];
    let y = run_golden(
        "g1",
        &conv_src(5, 5, 3, false),
        &[1, 5, 5, 1],
        image,
        &[("c.weight", vec![3, 3, 1, 1], filt)],
    );
    close(&y, &[4., 3., 4., 2., 4., 3., 2., 3., 4.]);

    let y = run_golden(
        "g2",
        &conv_src(3, 3, 2, true),
        &[1, 3, 3, 1],
        vec![2., 2., 1., 3., 1., -1., 4., 3., 2.],
        &[
            ("c.weight", vec![2, 2, 1, 1], vec![1., -1., -1., 0.]),
            ("c.bias", vec![1], vec![2.]),
        ],
    );
    close(&y, &[-1., 2., 0., 1.]);

    let edge = vec![1., 0., -1., 1., 0., -1., 1., 0., -1.];
    let input = vec![
        7., 2., 3., 3., 8., 4., 5., 3., 8., 4., 3., 3., 2., 8., 4., 2., 8., 7., 2., 7., 5., 4., 4.,
        5., 4.,
    ];
    let y = run_golden(
        "g3",
        &conv_src(5, 5, 3, false),
        &[1, 5, 5, 1],
        input,
        &[("c.weight", vec![3, 3, 1, 1], edge.clone())],
    );
    close(&y, &[6., -9., -8., -3., -2., -3., -3., 0., -2.]);

    let step: Vec<f32> = (0..6).flat_map(|_| [10., 10., 10., 0., 0., 0.]).collect();
    let y = run_golden(
        "g4",
        &conv_src(6, 6, 3, false),
        &[1, 6, 6, 1],
        step,
        &[("c.weight", vec![3, 3, 1, 1], edge)],
    );
    close(
        &y,
        &(0..4).flat_map(|_| [0., 30., 30., 0.]).collect::<Vec<_>>(),
    );
}

#[test]
fn golden_pooling_through_netc_run() {
    let pool = |h: usize, k: usize, s: usize| {
        format!(
            "model m {{ input x: [{h}, {h}, 1]  x -> maxpool2d({k}, stride: {s}) -> y  output y }}"
        )
    };
    let a = vec![
        3., 3., 2., 1., 0., 0., 0., 1., 3., 1., 3., 1., 2., 2., 3., 2., 0., 0., 2., 2., 2., 0., 0.,
        0., 1.,
    ];
    close(
        &run_golden("g5", &pool(5, 3, 1), &[1, 5, 5, 1], a, &[]),
        &[3., 3., 3., 3., 3., 3., 3., 2., 3.],
    );
    let b = vec![
        1., 4., 2., 1., 5., 8., 3., 4., 7., 6., 4., 5., 1., 3., 1., 2.,
    ];
    close(
        &run_golden("g6a", &pool(4, 2, 2), &[1, 4, 4, 1], b.clone(), &[]),
        &[8., 4., 7., 5.],
    );
    close(
        &run_golden("g6b", &pool(4, 2, 1), &[1, 4, 4, 1], b, &[]),
        &[8., 8., 4., 8., 8., 5., 7., 6., 5.],
    );
}

#[test]
fn course_cnn_batch_64_matches_the_interpreter() {
    let dir = tmpdir();
    let tmp = |name: &str| dir.path().join(name);
    let w = tmp("cnn.safetensors");
    let (code, out, err) = netc(&[
        "init",
        "examples/course_cnn.net",
        "-o",
        w.to_str().unwrap(),
        "--seed",
        "5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("693962 parameters"), "{out}");
    let xs: Vec<f32> = (0..64 * 784)
        .map(|i| ((i * 37) % 256) as f32 / 255.0)
        .collect();
    let x = tmp("cnn.x.npy");
    write_npy(&x, &Tensor::new(vec![64, 28, 28, 1], xs.clone()).unwrap()).unwrap();
    let y = tmp("cnn.y.npy");
    let (code, _, err) = netc(&[
        "run",
        "examples/course_cnn.net",
        "--weights",
        w.to_str().unwrap(),
        "--input",
        x.to_str().unwrap(),
        "-o",
        y.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let got = read_npy(&y).unwrap();
    assert_eq!(got.shape, vec![64, 10]);

    let src = std::fs::read_to_string(root().join("examples/course_cnn.net")).unwrap();
    let checked = check_ok(&src);
    let p = Compilation::new(&checked.graphs[0], CompileOptions::at(OptLevel::O0))
        .program(64)
        .unwrap();
    let weights = Weights::load(&w).unwrap();
    let mut bufs: Vec<Vec<f32>> = p
        .buffers
        .iter()
        .map(|b| match &b.kind {
            BufKind::Input(_) => xs.clone(),
            BufKind::Param(n) => weights.get(n).unwrap().data.clone(),
            BufKind::Temp | BufKind::State(_) => vec![0.0; b.len],
        })
        .collect();
    interp::run_program(&p, &mut bufs).unwrap();
    let want = &bufs[p.outputs[0].buf];
    for (a, b) in got.data.iter().zip(want) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "{a} vs {b}");
    }
    // Probabilities: rows sum to one.
    for row in got.data.chunks(10) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

#[test]
fn bad_weights_and_inputs_are_one_line_errors() {
    let dir = tmpdir();
    let tmp = |name: &str| dir.path().join(name);
    let w = tmp("bad.safetensors");
    let mut weights = Weights::new("course_cnn");
    weights.insert("conv1.weight", Tensor::zeros(vec![3, 3, 1, 16]).unwrap());
    weights.save(&w).unwrap();
    let x = tmp("bad.x.npy");
    write_npy(&x, &Tensor::zeros(vec![2, 28, 28, 1]).unwrap()).unwrap();
    let args = |w: &str, x: &str| {
        vec![
            "run".to_string(),
            "examples/course_cnn.net".into(),
            "--weights".into(),
            w.into(),
            "--input".into(),
            x.into(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        netc(&a)
    };
    let (code, _, err) = run(args(w.to_str().unwrap(), x.to_str().unwrap()));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("conv1.weight")
            && err.contains("[3, 3, 1, 16]")
            && err.contains("[3, 3, 1, 32]"),
        "{err}"
    );

    // Right shape for conv1.weight, but fc1 is missing entirely.
    let mut weights = Weights::new("course_cnn");
    weights.insert("conv1.weight", Tensor::zeros(vec![3, 3, 1, 32]).unwrap());
    weights.insert("conv1.bias", Tensor::zeros(vec![32]).unwrap());
    weights.save(&w).unwrap();
    let (code, _, err) = run(args(w.to_str().unwrap(), x.to_str().unwrap()));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("fc1.weight") && err.contains("[5408, 128]"),
        "{err}"
    );

    // Corrupt weights file.
    std::fs::write(&w, b"not a safetensors file").unwrap();
    let (code, _, err) = run(args(w.to_str().unwrap(), x.to_str().unwrap()));
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");

    // Input of the wrong shape.
    let (code, _, _) = netc(&["init", "examples/course_cnn.net", "-o", w.to_str().unwrap()]);
    assert_eq!(code, 0);
    write_npy(&x, &Tensor::zeros(vec![2, 28, 27, 1]).unwrap()).unwrap();
    let (code, _, err) = run(args(w.to_str().unwrap(), x.to_str().unwrap()));
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
    assert!(
        err.contains("[2, 28, 27, 1]") && err.contains("[batch, 28, 28, 1]"),
        "{err}"
    );

    // Missing input file.
    let (code, _, err) = run(args(w.to_str().unwrap(), "/nonexistent/x.npy"));
    assert_eq!((code, err.lines().count()), (1, 1), "{err}");
}

/// `--kernels cranelift` (or `NETC_KERNELS=cranelift`) runs the same
/// model on the portable kernels with the same result as the default
/// (native where the CPU has AVX2, AVX-512 where it has that), as does
/// `--kernels avx2` / `NETC_KERNELS=avx2` (the 256-bit kernels, bit for
/// bit the same as AVX-512's); an unknown `NETC_KERNELS` is an error.
#[test]
fn kernel_path_flag_and_environment() {
    let src = "model m { input x: [20]  x -> dense(37) -> relu -> dense(5) -> y  output y }";
    let dir = tmpdir();
    let tmp = |name: &str| dir.path().join(name);
    let net = tmp("kernels.net");
    std::fs::write(&net, src).unwrap();
    let mut w = Weights::new("m");
    let vals = |n: usize, s: f32| (0..n).map(|i| ((i * 7) % 11) as f32 * s - 0.2).collect();
    w.insert(
        "dense_1.weight",
        Tensor::new(vec![20, 37], vals(740, 0.03)).unwrap(),
    );
    w.insert(
        "dense_1.bias",
        Tensor::new(vec![37], vals(37, 0.02)).unwrap(),
    );
    w.insert(
        "dense_2.weight",
        Tensor::new(vec![37, 5], vals(185, 0.05)).unwrap(),
    );
    w.insert("dense_2.bias", Tensor::new(vec![5], vals(5, 0.01)).unwrap());
    let wpath = tmp("kernels.safetensors");
    w.save(&wpath).unwrap();
    let x = tmp("kernels.x.npy");
    write_npy(&x, &Tensor::new(vec![9, 20], vals(180, 0.1)).unwrap()).unwrap();
    let run = |tag: &str, extra: &[&str], env: Option<&str>| {
        let y = tmp(&format!("kernels.{tag}.npy"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_netc"));
        cmd.args(["run", net.to_str().unwrap(), "--weights"])
            .args([wpath.to_str().unwrap(), "--input", x.to_str().unwrap()])
            .args(["--output", y.to_str().unwrap()])
            .args(extra)
            .env_remove("NETC_KERNELS");
        if let Some(v) = env {
            cmd.env("NETC_KERNELS", v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), err, y)
    };
    let (code, err, auto) = run("auto", &[], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, flag) = run("flag", &["--kernels", "cranelift"], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, env) = run("env", &[], Some("cranelift"));
    assert_eq!(code, Some(0), "{err}");
    let auto = read_npy(&auto).unwrap().data;
    close(&read_npy(&flag).unwrap().data, &auto);
    close(&read_npy(&env).unwrap().data, &auto);
    let (code, err, avx2) = run("avx2", &["--kernels", "avx2"], None);
    assert_eq!(code, Some(0), "{err}");
    let (code, err, avx2_env) = run("avx2_env", &[], Some("avx2"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(read_npy(&avx2).unwrap().data, auto);
    assert_eq!(read_npy(&avx2_env).unwrap().data, auto);
    let (code, err, _) = run("bad", &[], Some("avx9"));
    assert_ne!(code, Some(0));
    assert!(err.contains("NETC_KERNELS=avx9"), "{err}");
}
