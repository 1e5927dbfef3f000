//! The `augment:` and `bucket:` settings of a training section: typed
//! values and one diagnostic per bad value.

use netc_compiler::pipeline::check_source;
use netc_compiler::train::Augment;

const MODEL: &str =
    "model m {\n  input x: [8, 8, 1]\n  x -> flatten -> dense(2) -> softmax -> y\n  output y\n}\n";

fn check(settings: &str) -> (Vec<Augment>, bool, Vec<String>) {
    let src = format!("{MODEL}train m {{\n{settings}\n}}\n");
    let c = check_source(&src).expect("parses");
    let diags = c
        .diagnostics
        .iter()
        .map(|d| format!("{} {}", d.code, d.message))
        .collect();
    (c.trains[0].augment.clone(), c.trains[0].bucket, diags)
}

#[test]
fn every_transformation_with_its_arguments() {
    let (a, bucket, d) = check(
        "augment: [flip(horizontal), flip(vertical), flip(both), shift(0.1), rotate(10), zoom(0.2)]\nbucket: true",
    );
    assert!(d.is_empty(), "{d:?}");
    assert!(bucket);
    assert_eq!(
        a,
        [
            Augment::Flip {
                horizontal: true,
                vertical: false
            },
            Augment::Flip {
                horizontal: false,
                vertical: true
            },
            Augment::Flip {
                horizontal: true,
                vertical: true
            },
            Augment::Shift(0.1),
            Augment::Rotate(10.0),
            Augment::Zoom(0.2),
        ]
    );
    let (a, bucket, _) = check("epochs: 1");
    assert!(a.is_empty() && !bucket);
}

#[test]
fn bad_values_are_diagnostics() {
    for (setting, want) in [
        ("augment: [shift(1.5)]", "E0"),
        ("augment: [rotate(0)]", "E0"),
        ("augment: [zoom(-0.1)]", "E0"),
        ("augment: [blur(2)]", "E0302"),
        ("augment: shift(0.1)", "E0302"),
        ("augment: [flip(diagonal)]", "E0"),
        ("bucket: 1", "E0302"),
    ] {
        let (_, _, d) = check(setting);
        assert!(d.iter().any(|m| m.starts_with(want)), "{setting}: {d:?}");
    }
}
