//! Generation: the compiled single-step model, fed one token at a time
//! with its state carried by the runtime, gives the whole-sequence model's
//! distributions at every step.

use netc_runtime::generate::Generator;
use netc_runtime::train::predict;
use netc_runtime::{init_weights, Tensor};

#[test]
fn stepping_matches_the_whole_sequence_on_the_jit() {
    let src = "model m { input x: [5, 1]  x -> lstm(6, return_sequences: true) as l1 \
               -> gru(5, return_sequences: true) as l2 -> dense(4) -> softmax -> y  output y }";
    let checked = netc_compiler::check(&netc_lang::parse(src).unwrap());
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let g = &checked.graphs[0];
    let w = init_weights(g, 11).unwrap();
    // Two sequences of token ids (as the model's float input).
    let seqs: [[u32; 5]; 2] = [[3, 1, 0, 2, 2], [1, 1, 3, 0, 1]];
    let x = Tensor::new(
        vec![2, 5, 1],
        seqs.iter().flatten().map(|&t| t as f32).collect(),
    )
    .unwrap();
    let want = predict(g, &w, &x, None, 2).unwrap();
    assert_eq!(want.shape, [2, 5, 4]);
    let mut gen = Generator::new(g, &w, 2, 2).unwrap();
    assert_eq!(gen.classes(), 4);
    assert_eq!(gen.state_layers(), ["l1", "l2"]);
    for round in 0..2 {
        for (t, (a, b)) in seqs[0].iter().zip(&seqs[1]).enumerate() {
            let probs = gen.step(&[*a, *b]).unwrap();
            for (s, row) in probs.iter().enumerate() {
                let at = (s * 5 + t) * 4;
                for (a, b) in row.iter().zip(&want.data[at..at + 4]) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "round {round} step {t} sample {s}: {a} vs {b}"
                    );
                }
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        // A new sequence starts from zero state, as the trained model's do.
        gen.reset();
    }
}
