"""The character language model (char_autocomplete.net's model) trained in
JAX, on data/text/words_{train,test}.txt.gz.

Model: character embedding 16 -> LSTM 128 -> dense over the 28 character
classes at every step -> softmax cross-entropy. A word of n letters is read
as <eow> w1 .. wn and predicts w1 .. wn <eow> (textdata.py: <pad> 0,
<eow> 1, a..z 2..27); every one of the n + 1 predictions is scored, the
padding is not. Adam lr 1e-3, batch 64 words, reshuffled every epoch.
Prints per epoch the training loss and next-character accuracy, and on
the held-out words (words_test.txt) the loss, the next-character accuracy
and the bits per character (the mean loss / ln 2), and the epoch's time.
For comparison on words_test.txt: a unigram letter model gives 4.24 bits
per character and 10.7 % accuracy, an add-one bigram model 3.56 bits and
23.8 % (data/text/README.md).

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/text_autocomplete_jax.py --epochs 10
    ~/.cache/jaxref/bin/python benches/reference/text_autocomplete_jax.py --epochs 1 --limit 2000   # a quick check
"""
import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import textdata
import textnn

jax.config.update("jax_platforms", "cpu")


def init_params(key, emb=16, hidden=128):
    k = jax.random.split(key, 3)
    return {"emb": textnn.embedding(k[0], textdata.N_CHARS, emb), "lstm": textnn.lstm(k[1], emb, hidden),
            "out": textnn.dense(k[2], hidden, textdata.N_CHARS)}


def logits(p, x):
    h, _ = textnn.run_lstm(p["lstm"], p["emb"][x], x != textdata.PAD)
    return h @ p["out"]["w"] + p["out"]["b"]


def loss_and_correct(p, x, y, w):
    """w [B, T]: 1 on the scored steps of real rows. Returns (mean loss in nats, correct count)."""
    z = logits(p, x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z), y[..., None], -1)[..., 0]
    return jnp.sum(w * nll) / jnp.sum(w), jnp.sum(w * (jnp.argmax(z, -1) == y))


@jax.jit
def train_step(p, s, x, y, w, lr):
    (value, correct), g = jax.value_and_grad(loss_and_correct, has_aux=True)(p, x, y, w)
    p, s = textnn.adam_update(p, g, s, lr)
    return p, s, value, correct


@jax.jit
def eval_step(p, x, y, w):
    value, correct = loss_and_correct(p, x, y, w)
    return value * jnp.sum(w), correct


def weights(y, row_w):
    return (y != textdata.PAD).astype(np.float32) * row_w[:, None]


def evaluate(p, x, y, batch):
    tot = cor = n = 0.0
    for idx, rw in textnn.batches(len(y), batch):
        w = weights(y[idx], rw)
        v, c = eval_step(p, x[idx], y[idx], w)
        tot, cor, n = tot + float(v), cor + float(c), n + float(w.sum())
    return tot / n, cor / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=textdata.default_data_dir(),
                    help="folder with words_*.txt.gz (or plain words_*.txt, as in data/text/tiny)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="read only the first N words of each file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    tr_path = textdata.data_file(a.data, "words_train.txt")
    te_path = textdata.data_file(a.data, "words_test.txt")
    length = 1 + max(len(w) for f in (tr_path, te_path) for w in textdata.read_lines(f, a.limit))
    xtr, ytr = textdata.char_arrays(tr_path, a.limit, length)
    xte, yte = textdata.char_arrays(te_path, a.limit, length)
    print(f"autocomplete: train {len(ytr)} words / {int((ytr != 0).sum())} predictions, "
          f"test {len(yte)} / {int((yte != 0).sum())}, {textdata.N_CHARS} classes, {length} steps",
          flush=True)
    rng = np.random.default_rng(a.seed)
    p = init_params(jax.random.PRNGKey(a.seed))
    s = textnn.adam_init(p)
    for e in range(a.epochs):
        t0, tot, cor, n = time.time(), 0.0, 0.0, 0.0
        for idx, rw in textnn.batches(len(ytr), a.batch, rng):
            w = weights(ytr[idx], rw)
            p, s, v, c = train_step(p, s, xtr[idx], ytr[idx], w, a.lr)
            tot, cor, n = tot + float(v) * float(w.sum()), cor + float(c), n + float(w.sum())
        t1 = time.time()
        te_loss, te_acc = evaluate(p, xte, yte, 256)
        print(f"epoch {e + 1}: train loss {tot / n:.4f} acc {100 * cor / n:.2f}% | "
              f"held-out loss {te_loss:.4f} acc {100 * te_acc:.2f}% bits/char {te_loss / math.log(2):.3f} | "
              f"{t1 - t0:.1f} s train, {time.time() - t1:.1f} s test", flush=True)


if __name__ == "__main__":
    main()
