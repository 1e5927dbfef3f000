"""The spam classifier (spam_classifier.net's model) trained in JAX, on
data/text/spam_{train,test}.tsv.gz.

Model: embedding 64 -> LSTM 64 (its state after the last real token) ->
dense 2 -> softmax cross-entropy. Each mail is its first 200 word tokens,
tokenized and indexed by textdata.py's rules (vocabulary from the training
split: <pad> 0, <unk> 1, count >= 2, at most 20,000). Adam lr 1e-3, batch
64, reshuffled every epoch, Keras-default initialisers (textnn.py). Prints
per epoch the training loss and accuracy, the test loss and accuracy, and
the epoch's time. The test split is 68.9 % ham (all-ham accuracy).

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/text_spam_jax.py --epochs 5
    ~/.cache/jaxref/bin/python benches/reference/text_spam_jax.py --epochs 1 --limit 512   # a quick check
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import textdata
import textnn

jax.config.update("jax_platforms", "cpu")


def init_params(key, vocab, emb=64, hidden=64):
    k = jax.random.split(key, 3)
    return {"emb": textnn.embedding(k[0], vocab, emb), "lstm": textnn.lstm(k[1], emb, hidden),
            "out": textnn.dense(k[2], hidden, 2)}


def logits(p, x):
    _, h = textnn.run_lstm(p["lstm"], p["emb"][x], x != textdata.PAD)
    return h @ p["out"]["w"] + p["out"]["b"]


def loss_and_correct(p, x, y, w):
    z = logits(p, x)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0]
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


def evaluate(p, x, y, batch):
    tot = cor = 0.0
    for idx, w in textnn.batches(len(y), batch):
        v, c = eval_step(p, x[idx], y[idx], w)
        tot, cor = tot + float(v), cor + float(c)
    return tot / len(y), cor / len(y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=textdata.default_data_dir(),
                    help="folder with spam_*.tsv.gz (or plain spam_*.tsv, as in data/text/tiny)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="read only the first N lines of each file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    xtr, ytr, xte, yte, vocab = textdata.spam_arrays(a.data, a.limit)
    print(f"spam: train {len(ytr)} mails ({int(ytr.sum())} spam), test {len(yte)} ({int(yte.sum())} spam), "
          f"vocabulary {len(vocab)}, {textdata.SEQ_LEN} tokens a mail; all-ham test accuracy "
          f"{100 * (1 - yte.mean()):.2f}%", flush=True)
    rng = np.random.default_rng(a.seed)
    p = init_params(jax.random.PRNGKey(a.seed), len(vocab))
    s = textnn.adam_init(p)
    for e in range(a.epochs):
        t0, tot, cor = time.time(), 0.0, 0.0
        for idx, w in textnn.batches(len(ytr), a.batch, rng):
            p, s, v, c = train_step(p, s, xtr[idx], ytr[idx], w, a.lr)
            tot, cor = tot + float(v) * w.sum(), cor + float(c)
        t1 = time.time()
        te_loss, te_acc = evaluate(p, xte, yte, 256)
        print(f"epoch {e + 1}: train loss {tot / len(ytr):.4f} acc {100 * cor / len(ytr):.2f}% | "
              f"test loss {te_loss:.4f} acc {100 * te_acc:.2f}% | {t1 - t0:.1f} s train, "
              f"{time.time() - t1:.1f} s test", flush=True)


if __name__ == "__main__":
    main()
