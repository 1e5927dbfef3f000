//! Data loaders against the data sets shipped in `data/` and against
//! hand-made good and broken files.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use netc_compiler::train::Loss;
use netc_runtime::data::{
    self, load, load_csv, load_idx_pair, load_mnist_dir, load_npy_pair, load_ucr, one_hot,
    read_idx, targets_for, CsvOptions, Dataset, LabelColumn, LabelKind, Split, ZScore,
};
use netc_runtime::{write_npy, Tensor};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data")
}

fn mnist() -> PathBuf {
    data_dir().join("mnist-10k")
}

fn italy() -> PathBuf {
    data_dir().join("italy-power-demand")
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn one_line(e: &impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "error spans several lines: {s}");
    s
}

/// Label counts read straight from the labels file's bytes (independent of
/// the loader): 8-byte header, then one byte per label.
fn raw_labels(split: &str) -> Vec<u8> {
    let bytes = gunzip(&mnist().join(format!("{split}-labels-idx1-ubyte.gz")));
    assert_eq!(&bytes[..4], &[0, 0, 8, 1]);
    bytes[8..].to_vec()
}

#[test]
fn mnist_10k_train_and_test() {
    let train = load_mnist_dir(mnist(), Split::Train).unwrap();
    assert_eq!(train.x.shape, vec![8000, 28, 28]);
    assert_eq!(train.len(), 8000);
    assert_eq!(train.classes, Some(10));
    assert_eq!(
        &train.y[..10],
        &[9.0, 1.0, 8.0, 7.0, 4.0, 4.0, 5.0, 6.0, 8.0, 7.0]
    );
    let test = load_mnist_dir(mnist(), Split::Test).unwrap();
    assert_eq!(test.x.shape, vec![2000, 28, 28]);
    assert_eq!(test.classes, Some(10));
    assert_eq!(&test.y[..4], &[6.0, 6.0, 6.0, 4.0]);

    for (split, ds) in [("train", &train), ("t10k", &test)] {
        let raw = raw_labels(split);
        let want: Vec<f32> = raw.iter().map(|&b| f32::from(b)).collect();
        assert_eq!(ds.y, want, "{split}");
        let mut counts = vec![0usize; 10];
        raw.iter().for_each(|&b| counts[b as usize] += 1);
        assert_eq!(ds.class_counts().unwrap(), counts, "{split}");
        // Pixels as stored: u8 values, the first image equal to the raw bytes.
        let img = gunzip(&mnist().join(format!("{split}-images-idx3-ubyte.gz")));
        let first: Vec<f32> = img[16..16 + 784].iter().map(|&b| f32::from(b)).collect();
        assert_eq!(&ds.x.data[..784], &first[..]);
        assert!(ds.x.data.iter().all(|&v| (0.0..=255.0).contains(&v)));
    }
    // Known per-class counts of the shipped split.
    assert_eq!(
        train.class_counts().unwrap(),
        vec![801, 902, 793, 826, 784, 690, 811, 856, 755, 782]
    );
    assert_eq!(
        test.class_counts().unwrap(),
        vec![200, 225, 198, 206, 196, 173, 203, 214, 189, 196]
    );
}

#[test]
fn load_spec_mnist_directory() {
    let (train, test) = load(mnist().to_str().unwrap()).unwrap();
    let test = test.expect("t10k files are shipped");
    assert_eq!((train.len(), test.len()), (8000, 2000));
    assert_eq!(train.example_shape(), &[28, 28]);
}

#[test]
fn gzip_and_raw_idx_agree() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
        let raw = gunzip(&mnist().join(format!("{name}.gz")));
        std::fs::write(tmp.path().join(name), raw).unwrap();
    }
    let raw = load_mnist_dir(tmp.path(), Split::Train).unwrap();
    let gz = load_mnist_dir(mnist(), Split::Train).unwrap();
    assert_eq!(raw, gz);
    // Only the train pair is there: load gives no test set.
    let (t, test) = load(tmp.path().to_str().unwrap()).unwrap();
    assert_eq!(t.len(), 8000);
    assert!(test.is_none());
    // No t10k pair: a clear error naming the directory.
    let e = load_mnist_dir(tmp.path(), Split::Test).unwrap_err();
    let s = one_line(&e);
    assert!(s.contains("t10k-images-idx3-ubyte"), "{s}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn broken_idx_files_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = gunzip(&mnist().join("t10k-labels-idx1-ubyte.gz"));
    let images = gunzip(&mnist().join("t10k-images-idx3-ubyte.gz"));
    let gz_images = std::fs::read(mnist().join("t10k-images-idx3-ubyte.gz")).unwrap();

    let mut flipped = gz_images.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 64] {
        *b ^= 0x5a;
    }
    let mut bad_crc = gzip(&labels);
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let mut huge = vec![0, 0, 0x0E, 4];
    for _ in 0..4 {
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
    }
    let mut extra = labels.clone();
    extra.push(7);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("short-magic", vec![0, 0, 8], "truncated"),
        ("not-idx", b"hello world".to_vec(), "not an IDX file"),
        ("bad-type", vec![0, 0, 0x42, 1, 0, 0, 0, 0], "element type"),
        ("short-dims", vec![0, 0, 8, 3, 0, 0, 7, 208, 0], "truncated"),
        (
            "short-data",
            images[..images.len() - 100].to_vec(),
            "truncated",
        ),
        ("short-gz", gz_images[..gz_images.len() / 3].to_vec(), ""),
        ("flipped-gz", flipped, ""),
        ("bad-crc-gz", bad_crc, "gzip"),
        ("huge-dims", huge, "too large"),
        ("trailing", extra, "unexpected bytes"),
        ("gz-of-garbage", gzip(b"garbage!"), "not an IDX file"),
    ];
    for (name, bytes, want) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let e = read_idx(&p).expect_err(name);
        let s = one_line(&e);
        assert!(s.starts_with(&p.display().to_string()), "{name}: {s}");
        assert!(s.contains(want), "{name}: {s}");
    }

    // Images and labels that disagree on the count.
    let img_p = tmp.path().join("img");
    let lab_p = tmp.path().join("lab");
    std::fs::write(&img_p, &images).unwrap();
    let mut short = labels.clone();
    short[4..8].copy_from_slice(&1999u32.to_be_bytes());
    short.pop();
    std::fs::write(&lab_p, &short).unwrap();
    let s = one_line(&load_idx_pair(&img_p, &lab_p).unwrap_err());
    assert!(
        s.contains("1999 labels") && s.contains("2000 images"),
        "{s}"
    );
    // Images given as labels: wrong rank.
    let s = one_line(&load_idx_pair(&img_p, &img_p).unwrap_err());
    assert!(s.contains("one dimension"), "{s}");
    // Missing file.
    let s = one_line(&read_idx(tmp.path().join("nope")).unwrap_err());
    assert!(s.contains("cannot read"), "{s}");
}

/// Labels of a `.ts` file read independently: the text after the last ':'.
fn ts_labels(path: &Path) -> Vec<String> {
    ts_text_labels(&std::fs::read_to_string(path).unwrap())
}

fn ts_text_labels(text: &str) -> Vec<String> {
    let data = text.split("@data").nth(1).unwrap();
    data.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.rsplit(':').next().unwrap().trim().to_string())
        .collect()
}

#[test]
fn italy_power_demand() {
    let train_p = italy().join("ItalyPowerDemand_TRAIN.ts");
    let test_p = italy().join("ItalyPowerDemand_TEST.ts");
    let train = load_ucr(&train_p).unwrap();
    assert_eq!(train.x.shape, vec![67, 24]);
    assert_eq!(train.classes, Some(2));
    let test = load_ucr(&test_p).unwrap();
    assert_eq!(test.x.shape, vec![1029, 24]);
    for (p, d) in [(&train_p, &train), (&test_p, &test)] {
        let want: Vec<f32> = ts_labels(p)
            .iter()
            .map(|l| match l.as_str() {
                "1" => 0.0,
                "2" => 1.0,
                other => panic!("unexpected label {other}"),
            })
            .collect();
        assert_eq!(d.y, want);
    }
    // First value of the first series, as written in the file.
    assert_eq!(train.x.data[0], "-0.71051757".parse::<f32>().unwrap());
    assert_eq!(train.y[0], 0.0);
    assert_eq!(train.y[2], 1.0);

    // The _TRAIN spec brings the sibling _TEST file; the directory does too.
    let (a, b) = load(train_p.to_str().unwrap()).unwrap();
    assert_eq!((a.len(), b.unwrap().len()), (67, 1029));
    let (a, b) = load(italy().to_str().unwrap()).unwrap();
    assert_eq!((a.len(), b.unwrap().len()), (67, 1029));
    // The _TEST file alone has no test set.
    let (a, b) = load(test_p.to_str().unwrap()).unwrap();
    assert_eq!((a.len(), b.is_none()), (1029, true));

    // For the LSTM example: a sequence of one feature per step.
    let seq = train.fit_to(&[24, 1]).unwrap();
    assert_eq!(seq.x.shape, vec![67, 24, 1]);
    assert_eq!(seq.x.data, train.x.data);
}

fn japanese_vowels() -> PathBuf {
    data_dir().join("japanese_vowels")
}

#[test]
fn japanese_vowels_unequal_lengths_from_gzip() {
    let train_p = japanese_vowels().join("JapaneseVowels_TRAIN.ts.gz");
    let test_p = japanese_vowels().join("JapaneseVowels_TEST.ts.gz");
    let train = load_ucr(&train_p).unwrap();
    let test = load_ucr(&test_p).unwrap();
    // 12 coefficients per step; each file padded to its longest series.
    assert_eq!(train.x.shape, vec![270, 26, 12]);
    assert_eq!(test.x.shape, vec![370, 29, 12]);
    assert_eq!(train.classes, Some(9));
    for (p, d) in [(&train_p, &train), (&test_p, &test)] {
        let text = String::from_utf8(gunzip(p)).unwrap();
        let want: Vec<f32> = ts_text_labels(&text)
            .iter()
            .map(|l| l.parse::<f32>().unwrap() - 1.0)
            .collect();
        assert_eq!(d.y, want);
        // True lengths, counted independently: the first dimension's values.
        let lens: Vec<usize> = text
            .split("@data")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .map(|l| l.split(':').next().unwrap().split(',').count())
            .collect();
        assert_eq!(d.lengths.as_ref(), Some(&lens));
    }
    let lens = train.lengths.as_ref().unwrap();
    assert_eq!(
        (lens.iter().min(), lens.iter().max()),
        (Some(&7), Some(&26))
    );
    // The first series has 20 steps: 6 steps of zeros, then its first step,
    // whose first and second coefficients are the file's first values.
    assert_eq!(lens[0], 20);
    assert!(train.x.data[..6 * 12].iter().all(|&v| v == 0.0));
    assert_eq!(train.x.data[6 * 12], 1.860936);
    assert_eq!(train.x.data[6 * 12 + 1], -0.207383);
    assert_eq!(train.x.data[26 * 12 - 12], 1.261441);

    // The _TRAIN.ts.gz spec brings _TEST.ts.gz; both padded to 29 steps.
    let (a, b) = load(train_p.to_str().unwrap()).unwrap();
    let b = b.unwrap();
    assert_eq!(
        (a.x.shape.clone(), b.x.shape.clone()),
        (vec![270, 29, 12], vec![370, 29, 12])
    );
    assert_eq!(a.lengths, train.lengths);
    // Three more zero steps in front of every training series.
    let same = a.x.data.chunks(29 * 12).zip(train.x.data.chunks(26 * 12));
    for (i, (padded, stored)) in same.enumerate() {
        assert!(padded[..36].iter().all(|&v| v == 0.0), "example {i}");
        assert!(padded[36..] == *stored, "example {i}");
    }
    let (a2, b2) = load(japanese_vowels().to_str().unwrap()).unwrap();
    assert_eq!((a2, b2.unwrap()), (a, b));
}

/// A gzip-compressed `.ts` file reads as the plain one; a `_TRAIN.ts.gz`
/// finds its `_TEST.ts.gz`; a model longer than the series pads them at
/// the start, a shorter one is an error naming the line.
#[test]
fn ragged_ts_for_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    // Not all whole numbers, or they would be taken for pixels and scaled.
    let train = "@equalLength false\n@dimensions 2\n@classLabel true a b\n@data\n\
                 1.5,2:3,4:a\n5:6:b\n";
    let test = "@equalLength false\n@dimensions 2\n@classLabel true a b\n@data\n\
                7.5,8,9:1,2,3:b\n";
    std::fs::write(tmp.path().join("R_TRAIN.ts"), train).unwrap();
    std::fs::write(tmp.path().join("R_TRAIN.ts.gz"), gzip(train.as_bytes())).unwrap();
    std::fs::write(tmp.path().join("R_TEST.ts.gz"), gzip(test.as_bytes())).unwrap();
    let plain = load_ucr(tmp.path().join("R_TRAIN.ts")).unwrap();
    let gz = load_ucr(tmp.path().join("R_TRAIN.ts.gz")).unwrap();
    assert_eq!(plain, gz);
    let gz_spec = tmp.path().join("R_TRAIN.ts.gz");
    let (a, b) = load(gz_spec.to_str().unwrap()).unwrap();
    // Padded to the test file's 3 steps.
    assert_eq!(a.x.shape, vec![2, 3, 2]);
    #[rustfmt::skip]
    assert_eq!(a.x.data, vec![
        0.0, 0.0,  1.5, 3.0,  2.0, 4.0,
        0.0, 0.0,  0.0, 0.0,  5.0, 6.0,
    ]);
    assert_eq!(a.lengths, Some(vec![2, 1]));
    assert_eq!(b.unwrap().lengths, Some(vec![3]));

    let graph = |t: usize| {
        let src = format!(
            "model m {{ input s: [{t}, 2]\n s -> lstm(3) -> dense(2) -> softmax -> y\n output y }}"
        );
        let c = netc_compiler::check(&netc_lang::parse(&src).unwrap());
        assert!(!c.has_errors(), "{:?}", c.diagnostics);
        c.graphs.into_iter().next().unwrap()
    };
    let (a, b) = data::load_for_model(
        &graph(5),
        gz_spec.to_str().unwrap(),
        Some(Loss::CrossEntropy),
    )
    .unwrap();
    assert_eq!(a.x.shape, vec![2, 5, 2]);
    assert_eq!(
        &a.x.data[..10],
        &[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.5, 3.0, 2.0, 4.0]
    );
    assert_eq!(a.y, vec![0.0, 1.0]);
    let b = b.unwrap();
    assert_eq!(
        b.x.data,
        vec![0.0, 0.0, 0.0, 0.0, 7.5, 1.0, 8.0, 2.0, 9.0, 3.0]
    );
    let e = data::load_for_model(&graph(2), gz_spec.to_str().unwrap(), None).unwrap_err();
    assert_eq!(
        one_line(&e),
        format!(
            "{}: line 5: the series has 3 time steps but the model's input has 2; netc pads \
             shorter series with zeros at the start but does not cut longer ones: give the \
             input at least 3 steps, the longest series here",
            tmp.path().join("R_TEST.ts.gz").display()
        )
    );
}

#[test]
fn broken_ts_files_are_errors_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(italy().join("ItalyPowerDemand_TRAIN.ts")).unwrap();
    let header_lines = text.split("@data").next().unwrap().lines().count();
    // `header_lines` lines precede `@data`; series k is on line header_lines + 1 + k.
    // Cut in the middle of the 4th series: that line is short.
    let data_start = text.find("@data").unwrap() + "@data\n".len();
    let line4 = data_start
        + text[data_start..]
            .match_indices('\n')
            .nth(2)
            .map(|(i, _)| i + 1)
            .unwrap();
    let truncated = &text[..line4 + 40];
    let missing = text.replacen("-1.1833204", "?", 1);
    let bad_label = text.replacen(":1\n", ":3\n", 1);
    let bad_num = text.replacen("-1.1833204", "-1.18x", 1);
    let cases: Vec<(&str, String, String)> = vec![
        (
            "truncated",
            truncated.to_string(),
            format!("line {}", header_lines + 5),
        ),
        ("missing", missing, format!("line {}", header_lines + 2)),
        ("bad-label", bad_label, "not one of the @classLabel".into()),
        ("bad-num", bad_num, "not a number".into()),
        (
            "header-only",
            text[..data_start].to_string(),
            "no series".into(),
        ),
        ("no-data-line", "# nothing\n".into(), "no @data".into()),
        ("binary", "\u{0}\u{1}\u{2}".into(), "line 1".into()),
    ];
    for (name, body, want) in cases {
        let p = tmp.path().join(format!("{name}.ts"));
        std::fs::write(&p, body).unwrap();
        let s = one_line(&load_ucr(&p).expect_err(name));
        assert!(s.starts_with(&p.display().to_string()), "{name}: {s}");
        assert!(s.contains(&want), "{name}: want {want:?} in {s}");
    }
    let p = tmp.path().join("latin1.ts");
    std::fs::write(&p, [b'#', 0xff, b'\n']).unwrap();
    assert!(one_line(&load_ucr(&p).unwrap_err()).contains("UTF-8"));
}

#[test]
fn csv_with_and_without_header() {
    let tmp = tempfile::tempdir().unwrap();
    let with = tmp.path().join("with.csv");
    std::fs::write(&with, "a,b,label\n1,2,0\n3,4,1\n5,6,2\n").unwrap();
    let without = tmp.path().join("without.csv");
    std::fs::write(&without, "1,2,0\n3,4,1\n5,6,2\n").unwrap();
    let o = CsvOptions::default();
    let a = load_csv(&with, &o).unwrap();
    let b = load_csv(&without, &o).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.x.shape, vec![3, 2]);
    assert_eq!(a.x.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(a.y, vec![0.0, 1.0, 2.0]);
    assert_eq!(a.classes, Some(3));

    // Label chosen by name and by index.
    let by_name = CsvOptions {
        label: LabelColumn::Name("a".into()),
        ..CsvOptions::default()
    };
    let c = load_csv(&with, &by_name).unwrap();
    assert_eq!(c.x.data, vec![2.0, 0.0, 4.0, 1.0, 6.0, 2.0]);
    assert_eq!(c.y, vec![1.0, 3.0, 5.0]);
    let by_index = CsvOptions {
        label: LabelColumn::Index(0),
        header: Some(false),
        ..CsvOptions::default()
    };
    assert_eq!(load_csv(&without, &by_index).unwrap(), c);
    // An explicit header on a file without one drops the first row.
    let forced = CsvOptions {
        header: Some(true),
        ..CsvOptions::default()
    };
    assert_eq!(load_csv(&without, &forced).unwrap().len(), 2);
    // Regression targets.
    let reg = tmp.path().join("reg.csv");
    std::fs::write(&reg, "x,y\n1,0.5\n2,1.5\n").unwrap();
    let r = load_csv(&reg, &o).unwrap();
    assert_eq!((r.y, r.classes), (vec![0.5, 1.5], None));
    let t = CsvOptions {
        kind: LabelKind::Targets,
        ..CsvOptions::default()
    };
    assert_eq!(load_csv(&without, &t).unwrap().classes, None);
    // Through load().
    let (d, test) = load(with.to_str().unwrap()).unwrap();
    assert_eq!((d.len(), test.is_none()), (3, true));

    // A ragged row names its line and the file.
    let ragged = tmp.path().join("ragged.csv");
    std::fs::write(&ragged, "a,b,c\n1,2,0\n3,0\n").unwrap();
    let s = one_line(&load_csv(&ragged, &o).unwrap_err());
    assert!(s.contains("ragged.csv") && s.contains("line 3"), "{s}");
}

fn toy(n: usize, classes: usize) -> Dataset {
    let x = Tensor::new(vec![n, 3], (0..n * 3).map(|v| v as f32).collect()).unwrap();
    let y = (0..n).map(|i| (i % classes) as f32).collect();
    Dataset::new(x, y, Some(classes)).unwrap()
}

#[test]
fn split_is_deterministic() {
    let d = toy(100, 4);
    let (t1, v1) = d.split(0.2, 42).unwrap();
    let (t2, v2) = d.split(0.2, 42).unwrap();
    assert_eq!((t1.len(), v1.len()), (80, 20));
    assert_eq!((&t1, &v1), (&t2, &v2));
    let (t3, v3) = d.split(0.2, 43).unwrap();
    assert_ne!(v1, v3);
    assert_ne!(t1, t3);
    // Disjoint and complete: every example lands in exactly one side.
    let mut firsts: Vec<f32> =
        t1.x.data
            .chunks(3)
            .chain(v1.x.data.chunks(3))
            .map(|r| r[0])
            .collect();
    firsts.sort_by(f32::total_cmp);
    let all: Vec<f32> = d.x.data.chunks(3).map(|r| r[0]).collect();
    assert_eq!(firsts, all);
    assert_eq!(t1.classes, Some(4));
    // Real data: 10% of MNIST-10k's train split.
    let m = load_mnist_dir(mnist(), Split::Train).unwrap();
    let (mt, mv) = m.split(0.1, 7).unwrap();
    assert_eq!((mt.len(), mv.len()), (7200, 800));
}

#[test]
fn epoch_shuffles_and_batches() {
    let d = toy(10, 2);
    let e0 = d.shuffled_indices(0);
    assert_eq!(e0, d.shuffled_indices(0));
    assert_ne!(e0, d.shuffled_indices(1));
    let mut seen = Vec::new();
    for chunk in e0.chunks(4) {
        let (x, y) = d.batch(chunk).unwrap();
        assert_eq!(x.shape, vec![chunk.len(), 3]);
        assert_eq!(y.shape, vec![chunk.len()]);
        for (row, &i) in x.data.chunks(3).zip(chunk) {
            assert_eq!(row[0], (3 * i) as f32);
        }
        seen.extend_from_slice(chunk);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    assert!(d.batch(&[10]).is_err());
}

#[test]
fn one_hot_rows() {
    let t = one_hot(&[2.0, 0.0, 1.0], 3).unwrap();
    assert_eq!(t.shape, vec![3, 3]);
    assert_eq!(t.data, vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert!(one_hot(&[3.0], 3).is_err());
    assert!(one_hot(&[0.5], 3).is_err());
    assert!(one_hot(&[-1.0], 3).is_err());
    assert!(one_hot(&[0.0], 0).is_err());
    assert_eq!(one_hot(&[], 4).unwrap().shape, vec![0, 4]);
    // Targets for a 10-way softmax on an MNIST batch.
    let m = load_mnist_dir(mnist(), Split::Test).unwrap();
    let (_, y) = m.batch(&[0, 1, 3]).unwrap();
    let t = targets_for(&y.data, m.classes, &[10]).unwrap();
    assert_eq!(t.shape, vec![3, 10]);
    assert_eq!(t.data[6], 1.0); // label 6
    assert_eq!(t.data[20 + 4], 1.0); // label 4
    assert_eq!(t.data.iter().sum::<f32>(), 3.0);
    let s = one_line(&targets_for(&y.data, m.classes, &[2]).unwrap_err());
    assert!(s.contains("10 classes"), "{s}");
}

#[test]
fn z_score_uses_training_statistics() {
    // Feature 0: 0, 2, 4 (mean 2, std sqrt(8/3)); feature 1 constant 5.
    let x = Tensor::new(vec![3, 2], vec![0.0, 5.0, 2.0, 5.0, 4.0, 5.0]).unwrap();
    let mut train = Dataset::new(x, vec![0.0, 1.0, 0.0], Some(2)).unwrap();
    let vx = Tensor::new(vec![1, 2], vec![10.0, 7.0]).unwrap();
    let mut val = Dataset::new(vx, vec![1.0], Some(2)).unwrap();
    let z = ZScore::fit(&train).unwrap();
    assert_eq!(z.mean, vec![2.0, 5.0]);
    let s0 = (8.0f32 / 3.0).sqrt();
    assert!((z.std[0] - s0).abs() < 1e-6);
    assert_eq!(z.std[1], 1.0); // constant feature: centred only
    z.apply(&mut train).unwrap();
    z.apply(&mut val).unwrap();
    // Train is standardized; val uses the train statistics, not its own.
    let m0: f32 = train.x.data.chunks(2).map(|r| r[0]).sum::<f32>() / 3.0;
    assert!(m0.abs() < 1e-6);
    assert!((val.x.data[0] - (10.0 - 2.0) / s0).abs() < 1e-5);
    assert_eq!(val.x.data[1], 2.0);
    // Statistics for another feature count are refused.
    let mut other = toy(2, 2);
    let s = one_line(&z.apply(&mut other).unwrap_err());
    assert!(
        s.contains("2 values per example") && s.contains("[2, 3]"),
        "{s}"
    );

    // Images: scale to [0, 1], then one global mean/std from train.
    let mut m = load_mnist_dir(mnist(), Split::Train).unwrap();
    m.scale(1.0 / 255.0);
    assert!(m.x.data.iter().all(|&v| (0.0..=1.0).contains(&v)));
    let g = ZScore::fit_global(&m).unwrap();
    assert!((g.mean[0] - 0.13).abs() < 0.01, "{g:?}");
    assert!((g.std[0] - 0.31).abs() < 0.01, "{g:?}");
    assert_eq!(ZScore::from_json(&g.to_json()).unwrap(), g);
}

#[test]
fn fit_to_reshapes_or_explains() {
    let m = load_mnist_dir(mnist(), Split::Test).unwrap();
    let nhwc = m.fit_to(&[28, 28, 1]).unwrap();
    assert_eq!(nhwc.x.shape, vec![2000, 28, 28, 1]);
    assert_eq!(nhwc.x.data, m.x.data);
    assert_eq!(m.fit_to(&[784]).unwrap().x.shape, vec![2000, 784]);
    let e = m.fit_to(&[32, 32, 1]).unwrap_err();
    let s = one_line(&e);
    assert!(s.contains("[28, 28]") && s.contains("[32, 32, 1]"), "{s}");
    assert!(s.contains("784") && s.contains("1024"), "{s}");
    assert!(matches!(e.kind, data::DataErrorKind::Shape(_)));
    assert!(m.fit_to(&[usize::MAX, 2]).is_err());
}

#[test]
fn npy_pairs() {
    let tmp = tempfile::tempdir().unwrap();
    let x = Tensor::new(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let (xp, yp, hp, bp) = (
        tmp.path().join("x.npy"),
        tmp.path().join("y.npy"),
        tmp.path().join("h.npy"),
        tmp.path().join("b.npy"),
    );
    write_npy(&xp, &x).unwrap();
    write_npy(&yp, &Tensor::new(vec![3], vec![1.0, 0.0, 1.0]).unwrap()).unwrap();
    let d = load_npy_pair(&xp, &yp).unwrap();
    assert_eq!(
        (d.x.shape.clone(), d.y.clone(), d.classes),
        (vec![3, 2], vec![1.0, 0.0, 1.0], Some(2))
    );
    // Rows keep their shape: the loss decides what they mean. For
    // cross-entropy one-hot rows become class indices; for mse they are
    // targets.
    let hot = Tensor::new(vec![3, 3], vec![0., 1., 0., 0., 0., 1., 1., 0., 0.]).unwrap();
    write_npy(&hp, &hot).unwrap();
    let h = load_npy_pair(&xp, &hp).unwrap();
    assert_eq!(
        (&h.y, &h.target_shape, h.classes),
        (&hot.data, &vec![3], None)
    );
    let m = h.clone().check_targets(Loss::Mse, &[3]).unwrap();
    assert_eq!((&m.y, m.target_len()), (&hot.data, 3));
    let c = h.clone().check_targets(Loss::CrossEntropy, &[3]).unwrap();
    assert_eq!(
        (c.target_len(), c.y, c.classes),
        (1, vec![1.0, 2.0, 0.0], Some(3))
    );
    let s = one_line(&h.check_targets(Loss::CrossEntropy, &[4]).unwrap_err());
    assert!(
        s.contains("h.npy") && s.contains("3 target values per example"),
        "{s}"
    );
    // Through load().
    let spec = format!("{},{}", xp.display(), yp.display());
    let (l, test) = load(&spec).unwrap();
    assert_eq!((l, test), (d, None));
    // Count mismatch names both files.
    write_npy(&bp, &Tensor::new(vec![2], vec![0.0, 1.0]).unwrap()).unwrap();
    let s = one_line(&load_npy_pair(&xp, &bp).unwrap_err());
    assert!(
        s.contains("b.npy") && s.contains("x.npy") && s.contains("2 labels"),
        "{s}"
    );
    // A broken .npy keeps the npy reader's message (and its file name).
    std::fs::write(&bp, b"junk").unwrap();
    let s = one_line(&load_npy_pair(&xp, &bp).unwrap_err());
    assert!(s.contains("b.npy") && s.contains(".npy magic"), "{s}");
}

#[test]
fn load_spec_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (tmp.path().join("missing.csv"), "no such file"),
        (tmp.path().to_path_buf(), "neither"),
    ];
    for (p, want) in cases {
        let s = one_line(&load(p.to_str().unwrap()).unwrap_err());
        assert!(s.contains(want), "{s}");
    }
    let single = tmp.path().join("x.npy");
    std::fs::write(&single, b"").unwrap();
    let s = one_line(&load(single.to_str().unwrap()).unwrap_err());
    assert!(s.contains("x.npy,y.npy"), "{s}");
    let odd = tmp.path().join("data.bin");
    std::fs::write(&odd, b"").unwrap();
    let s = one_line(&load(odd.to_str().unwrap()).unwrap_err());
    assert!(s.contains("unknown data format"), "{s}");
    let s = one_line(&load("a.txt,b.npy").unwrap_err());
    assert!(s.contains("a.txt"), "{s}");
}

/// The full Fashion-MNIST from Debian's `dataset-fashion-mnist` package,
/// when it is installed (`apt-get install dataset-fashion-mnist`).
#[test]
fn fashion_mnist_from_debian_when_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    if !dir.is_dir() {
        eprintln!("skipped: {} is not installed", dir.display());
        return;
    }
    let (train, test) = load(dir.to_str().unwrap()).unwrap();
    let test = test.unwrap();
    assert_eq!(train.x.shape, vec![60_000, 28, 28]);
    assert_eq!(test.x.shape, vec![10_000, 28, 28]);
    assert_eq!(train.class_counts().unwrap(), vec![6_000; 10]);
    assert_eq!(test.class_counts().unwrap(), vec![1_000; 10]);
}
