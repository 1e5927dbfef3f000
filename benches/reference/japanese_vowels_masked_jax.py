"""japanese_vowels_masked.net's model trained in JAX, on
data/japanese_vowels/JapaneseVowels_{TRAIN,TEST}.ts.gz.

Model: a bidirectional LSTM of 100 units each way over utterances of any
length (7 to 29 steps of 12 coefficients), masked: each utterance's frames
come first and padding (zeros) after, the mask is 1 at its frames; over a
masked step the state is kept (textnn.scan_lstm, Keras's masking), so the
forward direction ends at the utterance's last frame and the backward one
starts there. The two final states are concatenated -> dense 9 -> softmax
cross-entropy. Labels 1..9 are classes 0..8.

Training as netc's: Adam lr 3e-3 (Keras's form) annealed per epoch by
netc's cosine(min_lr: 0.0), batch 16, reshuffled every epoch, 40 epochs of
270 // 16 = 16 full batches; Keras-default initialisers (textnn.py). JAX
pads every batch to 29 steps (the mask makes the results independent of
the padding; netc pads each batch to its own longest member). One CPU
thread. Prints per epoch the training loss and accuracy, the test loss
and accuracy, and the epoch's time.

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/japanese_vowels_masked_jax.py [--seed N]
"""
import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

import textnn  # sets XLA_FLAGS (one thread) before JAX starts computing
from japanese_vowels_jax import CLASSES, DIMS, STEPS, default_data_dir, read_ts

jax.config.update("jax_platforms", "cpu")


def at_the_front(x, lengths):
    """Series padded at the start (read_ts) -> frames first, zeros after,
    and the mask [N, T]."""
    out = np.zeros_like(x)
    mask = np.zeros(x.shape[:2], np.float32)
    for i, n in enumerate(lengths):
        out[i, :n] = x[i, STEPS - n:]
        mask[i, :n] = 1.0
    return out, mask


def init_params(key, hidden):
    k = jax.random.split(key, 3)
    return {"fwd": textnn.lstm(k[0], DIMS, hidden), "bwd": textnn.lstm(k[1], DIMS, hidden),
            "out": textnn.dense(k[2], 2 * hidden, CLASSES)}


def logits(p, x):
    """x: (frames [B, T, 12], mask [B, T])."""
    frames, mask = x
    _, (hf, _) = textnn.scan_lstm(p["fwd"], frames, mask)
    _, (hb, _) = textnn.scan_lstm(p["bwd"], frames, mask, reverse=True)
    h = jnp.concatenate([hf, hb], axis=-1)
    return h @ p["out"]["w"] + p["out"]["b"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=default_data_dir(),
                    help="folder with JapaneseVowels_{TRAIN,TEST}.ts.gz")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=100)
    a = ap.parse_args()
    xtr, ytr, ltr = read_ts(os.path.join(a.data, "JapaneseVowels_TRAIN.ts.gz"))
    xte, yte, lte = read_ts(os.path.join(a.data, "JapaneseVowels_TEST.ts.gz"))
    (xtr, mtr), (xte, mte) = at_the_front(xtr, ltr), at_the_front(xte, lte)
    print(f"JapaneseVowels: train {len(ytr)} utterances ({ltr.min()}-{ltr.max()} steps), "
          f"test {len(yte)} ({lte.min()}-{lte.max()} steps), masked; "
          f"BiLSTM {a.hidden}, batch {a.batch}, lr {a.lr}, seed {a.seed}", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), a.hidden)
    textnn.train(a, p, textnn.steps(logits),
                 len(ytr), lambda idx, rw: ((xtr[idx], mtr[idx]), ytr[idx], rw),
                 len(yte), lambda idx, rw: ((xte[idx], mte[idx]), yte[idx], rw),
                 lr_at=textnn.cosine(a.lr, a.epochs), drop_last=True)


if __name__ == "__main__":
    main()
