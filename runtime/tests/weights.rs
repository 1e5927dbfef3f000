//! Weights: safetensors round trip, metadata, validation messages against
//! a model's parameters, corrupt files.

use netc_compiler::Graph;
use netc_runtime::{expected_params, init_weights, Tensor, Weights, WeightsError};

fn graph(src: &str) -> Graph {
    let ast = netc_lang::parse(src).unwrap();
    let checked = netc_compiler::check(&ast);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    checked.graphs.into_iter().next().unwrap()
}

const CNN: &str = "
model cnn {
  input image: [28, 28, 1]
  image -> conv2d(filters: 16, kernel: 3) as conv1 -> relu
        -> maxpool2d(2) -> flatten
        -> dense(128) as fc1 -> relu -> dense(10) as fc2 -> softmax -> probs
  output probs
}
";

fn sample() -> Weights {
    let mut w = Weights::new("tiny");
    w.insert(
        "b.weight",
        Tensor::new(
            vec![2, 3],
            vec![1.0, 2.0, 3.0, -4.0, 5.5, f32::MIN_POSITIVE],
        )
        .unwrap(),
    );
    w.insert("a.bias", Tensor::vector(vec![0.25, -0.5]));
    w.insert("c.gamma", Tensor::scalar(7.0));
    w
}

#[test]
fn expected_params_follow_the_graph() {
    let g = graph(CNN);
    assert_eq!(
        expected_params(&g),
        vec![
            ("conv1.weight".to_string(), vec![3, 3, 1, 16]),
            ("conv1.bias".to_string(), vec![16]),
            ("fc1.weight".to_string(), vec![13 * 13 * 16, 128]),
            ("fc1.bias".to_string(), vec![128]),
            ("fc2.weight".to_string(), vec![128, 10]),
            ("fc2.bias".to_string(), vec![10]),
        ]
    );
    let g = graph(
        "model tagger {
           input tokens: [40, 16]
           tokens -> lstm(64, return_sequences: true, bidirectional: true) as encoder
                  -> dense(9) as tag -> softmax -> tags
           output tags
         }",
    );
    let names: Vec<String> = expected_params(&g).into_iter().map(|(n, _)| n).collect();
    for n in [
        "encoder.forward.weight",
        "encoder.forward.recurrent_weight",
        "encoder.forward.bias",
        "encoder.backward.weight",
        "encoder.backward.recurrent_weight",
        "encoder.backward.bias",
        "tag.weight",
        "tag.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    assert_eq!(names.len(), 8);
}

#[test]
fn safetensors_round_trip_with_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut w = sample();
    w.save(&path).unwrap();
    assert_eq!(w.source(), Some(path.as_path()));
    let back = Weights::load(&path).unwrap();
    assert_eq!(back.model(), "tiny");
    assert_eq!(back.source(), Some(path.as_path()));
    assert_eq!(back.len(), 3);
    for (name, t) in w.iter() {
        assert_eq!(back.get(name), Some(t), "{name}");
    }
    // Storage order is by name, so a loaded set's order is deterministic.
    assert_eq!(
        back.names().collect::<Vec<_>>(),
        ["a.bias", "b.weight", "c.gamma"]
    );
    // The header carries the netc metadata.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(header.contains(r#""__metadata__":{"#), "{header}");
    assert!(header.contains(r#""format":"netc""#), "{header}");
    assert!(header.contains(r#""model":"tiny""#), "{header}");
    assert!(header.contains(r#""dtype":"F32""#), "{header}");
    // No temporary file is left next to it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn initialized_weights_round_trip_and_validate() {
    let g = graph(CNN);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cnn.safetensors");
    let mut w = init_weights(&g, 1).unwrap();
    w.validate(&expected_params(&g)).unwrap();
    w.save(&path).unwrap();
    let back = Weights::load(&path).unwrap();
    back.validate(&expected_params(&g)).unwrap();
    assert_eq!(back.model(), "cnn");
    assert_eq!(
        back.param_count(),
        3 * 3 * 16 + 16 + 2704 * 128 + 128 + 1290
    );
    for (name, t) in w.iter() {
        assert_eq!(back.get(name).unwrap().data, t.data, "{name}");
    }
}

#[test]
fn validate_names_a_missing_tensor() {
    let g = graph(CNN);
    let mut w = init_weights(&g, 0).unwrap();
    // Rebuild without fc1.bias.
    let mut cut = Weights::new("cnn");
    for (n, t) in w.iter().filter(|(n, _)| *n != "fc1.bias") {
        cut.insert(n, t.clone());
    }
    let e = cut.validate(&expected_params(&g)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the weights have no tensor `fc1.bias` (expected shape [128])"
    );
    // From a file, the message names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    cut.save(&path).unwrap();
    let e = Weights::load(&path)
        .unwrap()
        .validate(&expected_params(&g))
        .unwrap_err();
    assert!(matches!(e, WeightsError::Missing { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "weights file {} has no tensor `fc1.bias` (expected shape [128])",
            path.display()
        )
    );
    assert!(!e.to_string().contains('\n'));
    // Saving sets the file for later messages too.
    w.save(&path).unwrap();
    w.insert("extra.weight", Tensor::zeros(vec![2, 2]).unwrap());
    assert!(w
        .validate(&expected_params(&g))
        .unwrap_err()
        .to_string()
        .starts_with(&format!(
            "weights file {} has tensor `extra.weight`",
            path.display()
        )));
}

#[test]
fn validate_names_a_wrong_shape() {
    let g = graph(CNN);
    let mut w = init_weights(&g, 0).unwrap();
    w.insert("conv1.weight", Tensor::zeros(vec![3, 3, 1, 32]).unwrap());
    assert_eq!(
        w.validate(&expected_params(&g)).unwrap_err().to_string(),
        "tensor `conv1.weight` has shape [3, 3, 1, 32] but the model expects [3, 3, 1, 16]"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    w.save(&path).unwrap();
    let e = Weights::load(&path)
        .unwrap()
        .validate(&expected_params(&g))
        .unwrap_err();
    assert!(matches!(e, WeightsError::Shape { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "weights file {}: tensor `conv1.weight` has shape [3, 3, 1, 32] \
             but the model expects [3, 3, 1, 16]",
            path.display()
        )
    );
}

#[test]
fn validate_rejects_an_extra_tensor() {
    let g = graph(CNN);
    let mut w = init_weights(&g, 0).unwrap();
    w.insert("fc3.weight", Tensor::zeros(vec![10, 4]).unwrap());
    assert_eq!(
        w.validate(&expected_params(&g)).unwrap_err().to_string(),
        "the weights have tensor `fc3.weight` (shape [10, 4]) that the model does not have; \
         are these weights for another model?"
    );
}

#[test]
fn wrong_dtype_is_named() {
    // A hand-written safetensors file with one F64 tensor.
    let header = r#"{"fc1.bias":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f64.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let e = Weights::load(&path).unwrap_err();
    assert!(matches!(e, WeightsError::Dtype { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "weights file {}: tensor `fc1.bias` has dtype F64, but netc weights are F32",
            path.display()
        )
    );
    // Without metadata the model name is empty.
    let header = r#"{"fc1.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 8]);
    let w = Weights::from_bytes(&bytes).unwrap();
    assert_eq!(w.model(), "");
    assert_eq!(w.get("fc1.bias").unwrap().data, vec![0.0, 0.0]);
}

#[test]
fn corrupt_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample().to_bytes().unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.safetensors",
            good[..good.len() - 3].to_vec(),
            "the file ends before the data of tensor `c.gamma` (truncated or corrupt)",
        ),
        (
            "cut-header.safetensors",
            good[..20].to_vec(),
            "its header length is wrong (truncated, or not a safetensors file)",
        ),
        (
            "tiny.safetensors",
            b"abc".to_vec(),
            "its header length is wrong (truncated, or not a safetensors file)",
        ),
        (
            "text.safetensors",
            b"this is a text file, not weights\n".to_vec(),
            "its header length is wrong (truncated, or not a safetensors file)",
        ),
        (
            "empty.safetensors",
            Vec::new(),
            "its header length is wrong (truncated, or not a safetensors file)",
        ),
    ];
    for (name, bytes, reason) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = Weights::load(&path).unwrap_err();
        assert!(matches!(e, WeightsError::Corrupt { .. }), "{name}: {e}");
        assert_eq!(
            e.to_string(),
            format!(
                "weights file {} is not a valid safetensors file: {reason}",
                path.display()
            )
        );
    }
    // Offsets that would overflow the parser's arithmetic (eight tensors of
    // 2^61 - 1 bytes each).
    let size: u64 = (1 << 61) - 1;
    let parts: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#,
                i * size,
                (i + 1) * size
            )
        })
        .collect();
    let header = format!("{{{}}}", parts.join(","));
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    assert_eq!(
        Weights::from_bytes(&bytes).unwrap_err().to_string(),
        "the weights are not a valid safetensors file: the file ends before the data of \
         tensor `t0` (truncated or corrupt)"
    );
    // Extra bytes after the data.
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    assert_eq!(
        Weights::from_bytes(&long).unwrap_err().to_string(),
        "the weights are not a valid safetensors file: \
         its data section does not match its header (truncated or corrupt)"
    );
    // A header of the right length that is not JSON.
    let mut bytes = 4u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"nope");
    let e = Weights::from_bytes(&bytes).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("the weights are not a valid safetensors file: invalid JSON in header"),
        "{e}"
    );
    // A missing file.
    let e = Weights::load(dir.path().join("none.safetensors")).unwrap_err();
    assert!(matches!(e, WeightsError::Read { .. }));
    assert!(e.to_string().starts_with("cannot read weights file "));
}

#[test]
fn damaged_bytes_never_panic() {
    let good = sample().to_bytes().unwrap();
    for cut in 0..good.len() {
        assert!(Weights::from_bytes(&good[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..good.len() {
        for v in [0u8, b'9', b'"', b'}', 0xff] {
            let mut b = good.clone();
            b[i] = v;
            let _ = Weights::from_bytes(&b);
        }
    }
}

#[test]
fn insert_replaces_in_place() {
    let mut w = sample();
    let old = w.insert("a.bias", Tensor::vector(vec![1.0, 1.0]));
    assert_eq!(old, Some(Tensor::vector(vec![0.25, -0.5])));
    assert_eq!(
        w.names().collect::<Vec<_>>(),
        ["b.weight", "a.bias", "c.gamma"]
    );
    w.get_mut("c.gamma").unwrap().data[0] = 2.0;
    assert_eq!(w.get("c.gamma"), Some(&Tensor::scalar(2.0)));
    assert!(w.get("nope").is_none());
}
