"""The JapaneseVowels LSTM (japanese_vowels.net's model) trained in JAX, on
data/japanese_vowels/JapaneseVowels_{TRAIN,TEST}.ts.gz.

Model: batchnorm over the 12 coefficients -> LSTM 100 over [29, 12] (its
last step) -> dense 9 -> softmax cross-entropy. Each utterance (7 to 29
steps of 12 coefficients) is padded with zeros at the start to 29 steps,
as netc's `.ts` loader pads it, and read without a mask: so the last step
follows the real data. Labels 1..9 are classes 0..8.

Training as netc's: Adam lr 3e-3 (Keras's form) annealed per epoch by
netc's cosine(min_lr: 0.0), batch 16, reshuffled every epoch, 40 epochs of
270 // 16 = 16 full batches (the partial one left out, as netc does);
Keras-default initialisers (textnn.py). Batchnorm as Keras's and netc's:
in training the batch's mean and biased variance per coefficient over
batch x steps (padding included), epsilon 1e-3, moving statistics updated
with momentum 0.99 after each step; at test time the moving statistics.
One CPU thread. Prints per epoch the training loss and accuracy, the test
loss and accuracy, and the epoch's time.

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/japanese_vowels_jax.py
    ~/.cache/jaxref/bin/python benches/reference/japanese_vowels_jax.py --seed 1
"""
import argparse
import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import textnn  # sets XLA_FLAGS (one thread) before JAX starts computing

jax.config.update("jax_platforms", "cpu")

STEPS = 29
DIMS = 12
CLASSES = 9


def default_data_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "data", "japanese_vowels"))


def read_ts(path):
    """A .ts(.gz) file of 12-dimensional series -> (x [N, 29, 12] padded with
    zeros at the start, labels [N] as 0..8, true lengths [N])."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = f.read().split("@data", 1)[1].split()
    x = np.zeros((len(rows), STEPS, DIMS), np.float32)
    y = np.zeros(len(rows), np.int32)
    lengths = np.zeros(len(rows), np.int32)
    for i, row in enumerate(rows):
        *dims, label = row.split(":")
        series = np.array([[float(v) for v in d.split(",")] for d in dims], np.float32).T
        x[i, STEPS - len(series):] = series
        y[i] = int(label) - 1
        lengths[i] = len(series)
    return x, y, lengths


EPSILON = 1e-3
MOMENTUM = 0.99


def init_params(key, hidden):
    k = jax.random.split(key, 2)
    bn = {"gamma": jnp.ones(DIMS), "beta": jnp.zeros(DIMS),
          "mean": jnp.zeros(DIMS), "var": jnp.ones(DIMS)}
    return {"bn": bn, "lstm": textnn.lstm(k[0], DIMS, hidden),
            "out": textnn.dense(k[1], hidden, CLASSES)}


def logits(p, x, training):
    """(logits, the batch's (mean, var) in training or None)."""
    bn = p["bn"]
    if training:
        mean, var = x.mean(axis=(0, 1)), x.var(axis=(0, 1))
    else:
        mean, var = bn["mean"], bn["var"]
    x = (x - mean) * bn["gamma"] / jnp.sqrt(var + EPSILON) + bn["beta"]
    # No mask: every step, padding included, goes through the cell.
    _, h = textnn.run_lstm(p["lstm"], x, jnp.ones(x.shape[:2], jnp.float32))
    stats = (mean, var) if training else None
    return h @ p["out"]["w"] + p["out"]["b"], stats


def step_fns():
    """textnn's train and eval steps with batchnorm's two modes: the moving
    statistics get no gradient (so Adam leaves them) and are set after the
    update."""
    def loss_and_aux(p, x, y, w):
        fixed = {**p, "bn": {**p["bn"], "mean": lax.stop_gradient(p["bn"]["mean"]),
                             "var": lax.stop_gradient(p["bn"]["var"])}}
        z, stats = logits(fixed, x, True)
        value, correct = textnn.nll_and_correct(z, y, w)
        return value, (correct, stats)

    @jax.jit
    def train_step(p, s, x, y, w, lr):
        (value, (correct, (mean, var))), g = jax.value_and_grad(
            loss_and_aux, has_aux=True)(p, x, y, w)
        p, s = textnn.adam_update(p, g, s, lr)
        bn = p["bn"]
        bn = {**bn, "mean": MOMENTUM * bn["mean"] + (1 - MOMENTUM) * mean,
              "var": MOMENTUM * bn["var"] + (1 - MOMENTUM) * var}
        return {**p, "bn": bn}, s, value, correct

    @jax.jit
    def eval_step(p, x, y, w):
        value, correct = textnn.nll_and_correct(logits(p, x, False)[0], y, w)
        return value * jnp.sum(w), correct

    return train_step, eval_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=default_data_dir(),
                    help="folder with JapaneseVowels_{TRAIN,TEST}.ts.gz")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--schedule", choices=["none", "cosine"], default="cosine",
                    help="cosine: netc's cosine(min_lr: 0.0), once per epoch")
    a = ap.parse_args()
    xtr, ytr, ltr = read_ts(os.path.join(a.data, "JapaneseVowels_TRAIN.ts.gz"))
    xte, yte, lte = read_ts(os.path.join(a.data, "JapaneseVowels_TEST.ts.gz"))
    print(f"JapaneseVowels: train {len(ytr)} utterances ({ltr.min()}-{ltr.max()} steps), "
          f"test {len(yte)} ({lte.min()}-{lte.max()} steps), padded at the start to {STEPS}; "
          f"LSTM {a.hidden}, batch {a.batch}, lr {a.lr}, seed {a.seed}", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), a.hidden)
    textnn.train(a, p, step_fns(),
                 len(ytr), lambda idx, rw: (xtr[idx], ytr[idx], rw),
                 len(yte), lambda idx, rw: (xte[idx], yte[idx], rw),
                 lr_at=textnn.cosine(a.lr, a.epochs) if a.schedule == "cosine" else None,
                 drop_last=True)


if __name__ == "__main__":
    main()
