//! `.npy` reading and writing: round trips, dtype conversion, and one clear
//! error per kind of bad file (files crafted byte by byte).

use netc_runtime::{
    decode_npy, encode_npy, read_npy, read_npy_with_dtype, write_npy, NpyDtype, NpyErrorKind,
    Tensor,
};

/// A `.npy` v1.0 file with header dict `dict` and raw `data`, laid out as
/// NumPy lays it out (header padded with spaces to 64 bytes, then `\n`).
fn npy(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut h = dict.to_string();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

fn dict(descr: &str, fortran: bool, shape: &str) -> String {
    let f = if fortran { "True" } else { "False" };
    format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
}

fn err(bytes: &[u8]) -> String {
    decode_npy(bytes).unwrap_err().to_string()
}

#[test]
fn f32_round_trip_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        Tensor::new(
            vec![2, 3],
            vec![1.0, -2.5, 3.25, f32::MAX, f32::MIN_POSITIVE, 0.0],
        )
        .unwrap(),
        Tensor::vector(vec![7.0, 8.0]),
        Tensor::scalar(-0.5),
        Tensor::zeros(vec![0, 4]).unwrap(),
        Tensor::full(vec![2, 1, 3, 1], 0.125).unwrap(),
    ];
    for (i, t) in cases.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.npy"));
        write_npy(&path, t).unwrap();
        let (back, dtype) = read_npy_with_dtype(&path).unwrap();
        assert_eq!(&back, t);
        assert_eq!(dtype, NpyDtype::F32);
    }
    // Nothing but the written files is left behind (no temporary files).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), cases.len());
}

#[test]
fn written_files_follow_the_format() {
    let t = Tensor::new(vec![2, 3], (0..6).map(|i| i as f32).collect()).unwrap();
    let bytes = encode_npy(&t);
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + hlen) % 64, 0, "data starts on a 64-byte boundary");
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
    assert!(header.ends_with(" \n"));
    assert_eq!(bytes.len(), 10 + hlen + 24);
    assert_eq!(&bytes[10 + hlen + 4..10 + hlen + 8], &1.0f32.to_le_bytes());
    // One-element shapes are written as Python 1-tuples.
    let v = encode_npy(&Tensor::vector(vec![1.0]));
    assert!(std::str::from_utf8(&v[10..v.len() - 4])
        .unwrap()
        .contains("'shape': (1,), }"));
}

#[test]
fn overwrite_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.npy");
    write_npy(&path, &Tensor::vector(vec![1.0; 100])).unwrap();
    write_npy(&path, &Tensor::scalar(3.0)).unwrap();
    assert_eq!(read_npy(&path).unwrap(), Tensor::scalar(3.0));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn reads_f64_converted_to_f32() {
    let vals = [0.1f64, -2.0, 1e300, 3.5];
    let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (t, dtype) = decode_npy(&npy(&dict("<f8", false, "(2, 2)"), &data)).unwrap();
    assert_eq!(dtype, NpyDtype::F64);
    assert_eq!(t.shape, vec![2, 2]);
    assert_eq!(t.data, vec![0.1f32, -2.0, f32::INFINITY, 3.5]);
}

#[test]
fn reads_integer_and_bool_dtypes() {
    let (t, dtype) = decode_npy(&npy(&dict("|u1", false, "(5,)"), &[0, 1, 9, 200, 255])).unwrap();
    assert_eq!(dtype, NpyDtype::U8);
    assert!(dtype.is_integer());
    assert_eq!(t.data, vec![0.0, 1.0, 9.0, 200.0, 255.0]);

    let i32s: Vec<u8> = [-3i32, 0, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
    let (t, dtype) = decode_npy(&npy(&dict("<i4", false, "(3,)"), &i32s)).unwrap();
    assert_eq!((dtype, t.data), (NpyDtype::I32, vec![-3.0, 0.0, 7.0]));

    let i64s: Vec<u8> = [9i64, -1, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (t, dtype) = decode_npy(&npy(&dict("<i8", false, "(3, 1)"), &i64s)).unwrap();
    assert_eq!(dtype, NpyDtype::I64);
    assert_eq!(t.shape, vec![3, 1]);
    assert_eq!(t.data, vec![9.0, -1.0, (1u64 << 40) as f32]);

    let (t, _) = decode_npy(&npy(&dict("|b1", false, "(3,)"), &[1, 0, 1])).unwrap();
    assert_eq!(t.data, vec![1.0, 0.0, 1.0]);
    let (t, _) = decode_npy(&npy(&dict("|i1", false, "(2,)"), &[0xff, 5])).unwrap();
    assert_eq!(t.data, vec![-1.0, 5.0]);
}

#[test]
fn accepts_header_variants() {
    // Key order, double quotes, Python 2 longs, a list for the shape, and
    // Fortran order on a 1-d array (same layout as C order).
    let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    for d in [
        "{'shape': (2,), 'fortran_order': False, 'descr': '<f4'}",
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2L,)}",
        "{'descr': '<f4', 'fortran_order': False, 'shape': [2]}",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
    ] {
        let (t, _) = decode_npy(&npy(d, &data)).unwrap_or_else(|e| panic!("{d}: {e}"));
        assert_eq!(t.data, vec![1.0, 2.0]);
    }
    // Version 2.0 (u32 header length).
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    v2.extend_from_slice(&(h.len() as u32).to_le_bytes());
    v2.extend_from_slice(h.as_bytes());
    v2.extend_from_slice(&data);
    assert_eq!(decode_npy(&v2).unwrap().0.data, vec![1.0, 2.0]);
}

#[test]
fn truncated_files() {
    let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let full = npy(&dict("<f4", false, "(2, 3)"), &data);
    assert_eq!(
        err(&full[..full.len() - 5]),
        "the file is truncated: the header describes 6 float32 elements (24 bytes) \
         but only 19 bytes of data follow"
    );
    assert_eq!(
        err(&full[..40]),
        "the file is truncated: the header is announced as 118 bytes but only 30 follow"
    );
    assert_eq!(
        err(&full[..9]),
        "the file is truncated: it ends inside the .npy preamble"
    );
    assert_eq!(
        err(b"\x93NUM"),
        "the file is truncated: it ends inside the .npy preamble"
    );
    // The same errors name the file when reading from disk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.npy");
    std::fs::write(&path, &full[..full.len() - 4]).unwrap();
    let e = read_npy(&path).unwrap_err();
    assert!(matches!(e.kind, NpyErrorKind::Truncated(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: the file is truncated: the header describes 6 float32 elements (24 bytes) \
             but only 20 bytes of data follow",
            path.display()
        )
    );
}

#[test]
fn bad_magic_and_garbage() {
    let magic = "not a .npy file (it does not start with the .npy magic bytes \\x93NUMPY)";
    assert_eq!(err(b""), magic);
    assert_eq!(
        err(b"PK\x03\x04 an npz archive is a zip"),
        "this is an .npz archive, not a .npy file; save each array on its own \
         (e.g. np.save('x.npy', np.load('data.npz')['x']))"
    );
    assert_eq!(err(b"1.0,2.0,3.0\n"), magic);
    assert_eq!(
        err(b"\x93NUMPY\x09\x00\x10\x00"),
        "unsupported .npy format version 9.0 (netc reads versions 1.0, 2.0 and 3.0)"
    );
    assert_eq!(
        err(&npy("this is not a dict", &[])),
        "malformed .npy header: unexpected character at byte 0"
    );
    assert_eq!(
        err(&npy("{'descr': '<f4', 'shape': (2,)}", &[0; 8])),
        "malformed .npy header: it has no 'fortran_order' key"
    );
    assert_eq!(
        err(&npy(&dict("<f4", false, "(2, -3)"), &[])),
        "malformed .npy header: a dimension in 'shape' is negative"
    );
    assert_eq!(
        err(&npy(&"(".repeat(40), &[])),
        "malformed .npy header: it is nested too deeply"
    );
    assert!(err(&npy(
        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,",
        &[]
    ))
    .starts_with("malformed .npy header:"));
    let mut bytes = npy(&dict("<f4", false, "(1,)"), &[0; 4]);
    bytes[20] = 0xff;
    assert_eq!(err(&bytes), "malformed .npy header: it is not ASCII text");
    assert_eq!(
        err(&npy(&dict("<f4", false, "(1,)"), &[0; 6])),
        "2 unexpected bytes follow the array data; the file is corrupt"
    );
}

#[test]
fn huge_shapes_are_errors_not_panics() {
    let e = decode_npy(&npy(
        &dict("<f4", false, "(4294967296, 4294967296, 16)"),
        &[],
    ))
    .unwrap_err();
    assert!(matches!(e.kind, NpyErrorKind::TooLarge(_)), "{e}");
    assert_eq!(
        err(&npy(&dict("<f4", false, "(99999999999999999999999,)"), &[])),
        "malformed .npy header: a dimension in 'shape' is too large"
    );
    // Fits in usize but the data is obviously not there.
    assert!(err(&npy(&dict("<f8", false, "(1000000000000,)"), &[]))
        .starts_with("the file is truncated"));
}

#[test]
fn fortran_order_is_rejected() {
    let data = [0u8; 24];
    assert_eq!(
        err(&npy(&dict("<f4", true, "(2, 3)"), &data)),
        "the array is stored in Fortran (column-major) order; netc reads C order \
         (save it with np.save(path, np.ascontiguousarray(a)))"
    );
}

#[test]
fn big_endian_is_rejected() {
    assert_eq!(
        err(&npy(&dict(">f4", false, "(2,)"), &[0; 8])),
        "the array is big-endian (dtype '>f4'); netc reads little-endian data \
         (convert it with a.astype(a.dtype.newbyteorder('<')))"
    );
    // Byte order is irrelevant for one-byte types.
    assert!(decode_npy(&npy(&dict(">u1", false, "(2,)"), &[1, 2])).is_ok());
}

#[test]
fn unsupported_dtypes_are_rejected() {
    let msg = |d: &str| {
        format!("unsupported dtype {d}; netc reads float32, float64, bool and 8- to 64-bit integer arrays")
    };
    assert_eq!(
        err(&npy(&dict("<c8", false, "(1,)"), &[0; 8])),
        msg("'<c8'")
    );
    assert_eq!(
        err(&npy(&dict("<f2", false, "(1,)"), &[0; 2])),
        msg("'<f2'")
    );
    assert_eq!(err(&npy(&dict("|O", false, "(1,)"), &[0; 8])), msg("'|O'"));
    assert_eq!(
        err(&npy(&dict("<U5", false, "(1,)"), &[0; 20])),
        msg("'<U5'")
    );
    assert_eq!(
        err(&npy(
            "{'descr': [('a', '<i4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 8]
        )),
        msg("(a structured record dtype)")
    );
}

#[test]
fn io_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.npy");
    let e = read_npy(&missing).unwrap_err();
    assert!(matches!(e.kind, NpyErrorKind::Read(_)));
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot read the file:", missing.display())));
    let nowhere = dir.path().join("no/such/dir/x.npy");
    let e = write_npy(&nowhere, &Tensor::scalar(1.0)).unwrap_err();
    assert!(matches!(e.kind, NpyErrorKind::Write(_)));
    assert!(e
        .to_string()
        .starts_with(&format!("{}: cannot write the file:", nowhere.display())));
}

#[test]
fn damaged_bytes_never_panic() {
    let good = encode_npy(&Tensor::new(vec![2, 3], vec![1.0; 6]).unwrap());
    for cut in 0..good.len() {
        assert!(decode_npy(&good[..cut]).is_err(), "cut at {cut}");
    }
    for i in 0..good.len() {
        for v in [0u8, b'9', b'(', b')', b',', b'\'', b'-', 0xff] {
            let mut b = good.clone();
            b[i] = v;
            let _ = decode_npy(&b);
        }
    }
}
