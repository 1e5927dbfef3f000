//! Hostile-input tests: data files and weights where they enter (labels, targets, non-finite values, formats).
//!
//! Every label is checked against the loss and the model's output when the
//! data loads (train, test and eval sets), the loss decides what targets
//! mean, no NaN or infinity gets in through a data file or a weights file,
//! and the messages for a wrong IDX magic, a `;`-separated CSV, a misshapen
//! input and an `--init-from` file of another model say what is wrong.

use crate::common::netc;
use netc_runtime::{write_npy, Tensor, Weights};
use std::path::{Path, PathBuf};

/// A `k`-way softmax classifier of 4 features, trained by `loss`.
fn classifier(k: usize) -> String {
    format!(
        "model c {{
  input x: [4]
  x -> dense({k}) as out -> softmax -> probs
  output probs
}}

train c {{
  loss: cross_entropy
  optimizer: sgd(lr: 0.1)
  batch: 4
  epochs: 1
}}
"
    )
}

/// `k` outputs of 4 features: `act` (`sigmoid`, or `none`), trained by `loss`.
fn model(k: usize, act: &str, loss: &str) -> String {
    let act = if act == "none" {
        String::new()
    } else {
        format!(" -> {act}")
    };
    format!(
        "model c {{
  input x: [4]
  x -> dense({k}) as out{act} -> y
  output y
}}

train c {{
  loss: {loss}
  optimizer: sgd(lr: 0.1)
  batch: 4
  epochs: 1
}}
"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn npy(dir: &Path, name: &str, shape: &[usize], data: Vec<f32>) -> String {
    let p = dir.join(name);
    write_npy(&p, &Tensor::new(shape.to_vec(), data).unwrap()).unwrap();
    p.display().to_string()
}

/// Features `[n, 4]` that are small, finite and differ per example.
fn features(n: usize) -> Vec<f32> {
    (0..n * 4).map(|i| ((i * 37) % 11) as f32 / 11.0).collect()
}

fn train(net: &str, data: &str) -> (i32, String, String) {
    netc(&["train", net, "--data", data])
}

/// Exit 1 with exactly one line on stderr that contains every `want`.
fn assert_one_error(got: (i32, String, String), want: &[&str]) {
    let (code, out, err) = got;
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected:\n{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// An IDX file: magic `00 00 code dims.len()`, big-endian dims, then `data`.
fn idx(code: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// An MNIST-layout directory of 2×2 images: `train` labels, and `t10k`
/// labels when given.
fn mnist_dir(dir: &Path, train: &[u8], test: Option<&[u8]>) -> String {
    let images = |n: usize| -> Vec<u8> {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 53 % 256) as u8).collect();
        idx(0x08, &[n as u32, 2, 2], &pixels)
    };
    let d = dir.join("mnist");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte"), images(train.len())).unwrap();
    std::fs::write(
        d.join("train-labels-idx1-ubyte"),
        idx(0x08, &[train.len() as u32], train),
    )
    .unwrap();
    if let Some(test) = test {
        std::fs::write(d.join("t10k-images-idx3-ubyte"), images(test.len())).unwrap();
        std::fs::write(
            d.join("t10k-labels-idx1-ubyte"),
            idx(0x08, &[test.len() as u32], test),
        )
        .unwrap();
    }
    d.display().to_string()
}

#[test]
fn idx_labels_outside_the_models_classes_name_file_row_and_value() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(10));
    let good = [0u8, 1, 2, 3, 4, 5, 6, 7];

    let mut ten = good;
    ten[5] = 10;
    let data = mnist_dir(&tmp.path().join("a"), &ten, None);
    assert_one_error(
        train(&net, &data),
        &[
            "train-labels-idx1-ubyte",
            "row 5",
            "label 10 is not a class index",
            "10 classes",
        ],
    );

    let mut byte = good;
    byte[2] = 255;
    let data = mnist_dir(&tmp.path().join("b"), &byte, None);
    assert_one_error(
        train(&net, &data),
        &["train-labels-idx1-ubyte", "row 2", "label 255"],
    );

    // The test set is checked as well, not only the training set.
    let data = mnist_dir(&tmp.path().join("c"), &good, Some(&[3, 200, 1, 0]));
    assert_one_error(
        train(&net, &data),
        &["t10k-labels-idx1-ubyte", "row 1", "label 200"],
    );
}

#[test]
fn ten_class_data_on_a_five_way_softmax_or_a_sigmoid_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let x = npy(tmp.path(), "x.npy", &[12, 4], features(12));
    let y = npy(
        tmp.path(),
        "y.npy",
        &[12],
        (0..12).map(|i| (i % 10) as f32).collect(),
    );
    let data = format!("{x},{y}");

    let net = write(tmp.path(), "five.net", &classifier(5));
    assert_one_error(
        train(&net, &data),
        &[
            "y.npy",
            "row 5",
            "label 5 is not a class index",
            "5 classes",
        ],
    );

    // Sigmoid + binary cross-entropy printed a negative loss and 89.84 %.
    let net = write(
        tmp.path(),
        "bce.net",
        &model(1, "sigmoid", "binary_cross_entropy"),
    );
    assert_one_error(
        train(&net, &data),
        &["y.npy", "row 2", "target 2 is outside [0, 1]", "softmax"],
    );
}

#[test]
fn csv_labels_that_are_not_class_indices_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    // One −1 or 1.5 used to turn the whole column into regression targets.
    for bad in ["7", "-1", "1.5", "4000000000"] {
        let mut csv = String::from("a,b,c,d,label\n");
        for i in 0..8 {
            let label = if i == 2 {
                bad.to_string()
            } else {
                (i % 3).to_string()
            };
            csv.push_str(&format!("{i},1,0,2,{label}\n"));
        }
        let data = write(tmp.path(), "d.csv", &csv);
        assert_one_error(
            train(&net, &data),
            &[
                "d.csv: line 4",
                &format!("label {bad} is not a class index"),
                "3 classes",
            ],
        );
    }
    // Class names count too: a fourth name on a 3-way softmax.
    let data = write(
        tmp.path(),
        "names.csv",
        "a,b,c,d,kind\n1,2,3,4,cat\n4,3,2,1,dog\n0,0,1,1,zebra\n1,1,0,0,emu\n",
    );
    assert_one_error(
        train(&net, &data),
        &[
            "names.csv: line 4",
            "label 'zebra' (class 3) is not a class index",
            "3 classes (0 to 2)",
        ],
    );
}

#[test]
fn npy_labels_nine_and_minus_one_are_refused_in_train_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let x = npy(tmp.path(), "x.npy", &[6, 4], features(6));
    let w = tmp.path().join("w.safetensors").display().to_string();
    assert_eq!(netc(&["init", &net, "-o", &w]).0, 0);
    for bad in [9.0, -1.0] {
        let y = npy(
            tmp.path(),
            "y.npy",
            &[6],
            vec![0.0, 1.0, 2.0, bad, 1.0, 0.0],
        );
        let data = format!("{x},{y}");
        let want = [
            "y.npy",
            "row 3",
            &format!("label {bad} is not a class index"),
        ];
        assert_one_error(train(&net, &data), &want);
        // eval used to report a finite loss on such labels.
        assert_one_error(
            netc(&["eval", &net, "--weights", &w, "--data", &data]),
            &want,
        );
    }
}

#[test]
fn the_loss_decides_what_npy_targets_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let x = npy(tmp.path(), "x.npy", &[8, 4], features(8));
    let trains = |net: &str, y: &str| {
        let (code, out, err) = train(net, &format!("{x},{y}"));
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("epoch 1/1  loss"), "{out}\n{err}");
    };

    // Regression targets of the output's shape, some rows looking one-hot
    // (once read as class indices) and some not (once refused).
    let mse = write(tmp.path(), "mse.net", &model(2, "none", "mse"));
    let rows: Vec<f32> = (0..8)
        .flat_map(|i| match i % 3 {
            0 => [1.0, 0.0],
            1 => [0.0, 1.0],
            _ => [0.3, -1.25],
        })
        .collect();
    trains(&mse, &npy(tmp.path(), "reg.npy", &[8, 2], rows.clone()));
    let hot: Vec<f32> = (0..8)
        .flat_map(|i| if i % 2 == 0 { [1.0, 0.0] } else { [0.0, 1.0] })
        .collect();
    trains(&mse, &npy(tmp.path(), "hot.npy", &[8, 2], hot.clone()));

    // Multi-label targets for three sigmoid outputs.
    let bce = write(
        tmp.path(),
        "bce.net",
        &model(3, "sigmoid", "binary_cross_entropy"),
    );
    let multi: Vec<f32> = (0..24).map(|i| ((i * 7) % 3 == 0) as u8 as f32).collect();
    trains(&bce, &npy(tmp.path(), "multi.npy", &[8, 3], multi));

    // Cross-entropy takes one-hot rows (converted) but not soft rows.
    let ce = write(tmp.path(), "ce.net", &classifier(2));
    trains(&ce, &npy(tmp.path(), "hot2.npy", &[8, 2], hot));
    let soft = npy(tmp.path(), "soft.npy", &[8, 2], rows);
    assert_one_error(
        train(&ce, &format!("{x},{soft}")),
        &["soft.npy", "row 2", "[0.3, -1.25] is not a one-hot row"],
    );

    // One value per example cannot be compared with two outputs.
    let one = npy(tmp.path(), "one.npy", &[8], vec![0.5; 8]);
    assert_one_error(
        train(&mse, &format!("{x},{one}")),
        &["one.npy", "mse", "one label per example", "2 values"],
    );
}

#[test]
fn nan_in_npy_inputs_is_refused_with_example_and_position() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let mut xs = features(8);
    xs[3 * 4 + 1] = f32::NAN;
    let x = npy(tmp.path(), "x.npy", &[8, 4], xs.clone());
    let y = npy(
        tmp.path(),
        "y.npy",
        &[8],
        (0..8).map(|i| (i % 3) as f32).collect(),
    );
    // It used to train: loss 1.0969, acc 46.88 %.
    assert_one_error(
        train(&net, &format!("{x},{y}")),
        &["x.npy", "example 3", "NaN at [1]"],
    );

    // The same for `run` and `predict` inputs.
    let w = tmp.path().join("w.safetensors").display().to_string();
    assert_eq!(netc(&["init", &net, "-o", &w]).0, 0);
    let out = tmp.path().join("p.npy").display().to_string();
    xs[3 * 4 + 1] = f32::INFINITY;
    let x = npy(tmp.path(), "x.npy", &[8, 4], xs);
    let want = ["x.npy", "example 3", "inf at [1]"];
    assert_one_error(netc(&["run", &net, "--weights", &w, "--input", &x]), &want);
    assert_one_error(
        netc(&["predict", &net, "--weights", &w, "--input", &x, "-o", &out]),
        &want,
    );
}

/// The weights of `net` from `netc init`, with `out.bias[1]` set to `v`.
fn weights_with(dir: &Path, net: &str, v: f32) -> String {
    let p = dir.join(format!("w{v}.safetensors"));
    let ps = p.display().to_string();
    assert_eq!(netc(&["init", net, "-o", &ps]).0, 0);
    let mut w = Weights::load(&p).unwrap();
    w.get_mut("out.bias").unwrap().data[1] = v;
    w.save(&p).unwrap();
    ps
}

#[test]
fn non_finite_weights_are_refused_wherever_they_load() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let data = write(tmp.path(), "d.csv", "1,2,3,4,0\n4,3,2,1,1\n0,0,1,1,2\n");
    let x = npy(tmp.path(), "x.npy", &[1, 4], features(1));
    let nan = weights_with(tmp.path(), &net, f32::NAN);
    let inf = weights_with(tmp.path(), &net, f32::INFINITY);
    // NaN weights evaluated to a finite loss; +inf gave a uniform softmax.
    assert_one_error(
        netc(&["eval", &net, "--weights", &nan, "--data", &data]),
        &[&nan, "tensor `out.bias` holds NaN at [1]"],
    );
    assert_one_error(
        netc(&["run", &net, "--weights", &inf, "--input", &x]),
        &[&inf, "tensor `out.bias` holds inf at [1]"],
    );
    let out = tmp.path().join("p.npy").display().to_string();
    assert_one_error(
        netc(&[
            "predict",
            &net,
            "--weights",
            &inf,
            "--input",
            &x,
            "-o",
            &out,
        ]),
        &["holds inf"],
    );
    assert_one_error(
        netc(&["train", &net, "--data", &data, "--init-from", &nan]),
        &[&nan, "holds NaN"],
    );
}

#[test]
fn an_idx_file_with_a_wrong_magic_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(10));
    let data = mnist_dir(tmp.path(), &[0, 1, 2, 3], None);
    // Four dimensions declared for three: the first pixels read as a size
    // of 0, which was reported as a shape [4, 2, 2, 0].
    let images = PathBuf::from(&data).join("train-images-idx3-ubyte");
    let mut pixels = vec![0u8; 16];
    pixels[5] = 7;
    std::fs::write(&images, idx(0x08, &[4, 2, 2], &pixels)).unwrap();
    let mut bytes = std::fs::read(&images).unwrap();
    bytes[3] = 4;
    std::fs::write(&images, bytes).unwrap();
    assert_one_error(
        train(&net, &data),
        &[
            "train-images-idx3-ubyte",
            "not an IDX file",
            "magic 00 00 08 04 (u8, 4 dimensions)",
        ],
    );
}

#[test]
fn a_semicolon_separated_csv_gets_a_hint_at_the_delimiter() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let data = write(
        tmp.path(),
        "semi.csv",
        "a;b;c;d;label\n1;2;3;4;0\n4;3;2;1;1\n",
    );
    // It used to say "examples have shape [0]".
    assert_one_error(
        train(&net, &data),
        &["semi.csv: line 1", "';'", "comma-separated"],
    );
}

#[test]
fn predict_and_run_check_input_shapes_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let w = tmp.path().join("w.safetensors").display().to_string();
    assert_eq!(netc(&["init", &net, "-o", &w]).0, 0);
    let x = npy(tmp.path(), "x.npy", &[3, 2, 2], features(3));
    let out = tmp.path().join("p.npy").display().to_string();
    // predict reshaped [3, 2, 2] to [3, 4]; run refused it.
    let want = [
        "x.npy",
        "input `x` has shape [3, 2, 2]",
        "[batch, 4]",
        "[4]",
    ];
    let run = netc(&["run", &net, "--weights", &w, "--input", &x]);
    let predict = netc(&["predict", &net, "--weights", &w, "--input", &x, "-o", &out]);
    assert_eq!(run.2, predict.2, "one message for both");
    assert_one_error(run, &want);
    assert_one_error(predict, &want);
    assert!(!Path::new(&out).exists());

    // A single example without the batch axis is fine for both.
    let one = npy(tmp.path(), "one.npy", &[4], features(1));
    let (code, stdout, err) = netc(&[
        "predict",
        &net,
        "--weights",
        &w,
        "--input",
        &one,
        "-o",
        &out,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("wrote predictions [1, 3]"), "{stdout}");
}

#[test]
fn init_from_weights_of_another_model_is_an_error_and_extra_tensors_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let net = write(tmp.path(), "c.net", &classifier(3));
    let data = write(tmp.path(), "d.csv", "1,2,3,4,0\n4,3,2,1,1\n0,0,1,1,2\n");
    let other = tmp.path().join("other.safetensors");
    let mut w = Weights::new("other");
    w.insert("enc.weight", Tensor::zeros(vec![4, 3]).unwrap());
    w.save(&other).unwrap();
    let o = other.display().to_string();
    // It printed "initialized 0 tensors" and trained from scratch.
    assert_one_error(
        netc(&["train", &net, "--data", &data, "--init-from", &o]),
        &[
            &o,
            "no tensor in the file is a parameter of the model",
            "the file has `enc.weight`",
            "the model has `out.weight`, `out.bias`",
        ],
    );

    // Some shared: trains, and the ignored tensor is named.
    w.insert("out.bias", Tensor::zeros(vec![3]).unwrap());
    w.save(&other).unwrap();
    let (code, _, err) = netc(&["train", &net, "--data", &data, "--init-from", &o]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning:")
            && err.contains("ignored 1 tensor(s) the model does not have: `enc.weight`"),
        "{err}"
    );
    assert!(
        err.contains("initialized 1 tensors") && err.contains("1 of the model's 2"),
        "{err}"
    );
}
