"""The Keras addition example (addition_seq2seq.net's model) trained in JAX,
on data/addition/addition_{train,test}.tsv.gz (data/addition/build.py).

Model, as examples/addition_seq2seq.net: character embedding 16 -> LSTM 128
encoder, whose final state (h, c) is both repeated at the 4 answer
positions (as h ++ c, 256 features) and the decoder's initial state ->
LSTM 128 decoder over the 4 positions -> dense over the 14 ids at each
position -> softmax cross-entropy over all 4 answer characters (the
answers are padded with spaces in the file, so every position is scored).
With --no-state the decoder starts from zeros and reads the repeated h
(Keras's original model).

Vocabulary, netc's `text: char()` rule: <pad> 0, <unk> 1, then the
characters of the training file's questions and answers by descending
count, ties by first appearance (14 ids). Adam lr 1e-3 (Keras's form),
batch 32, reshuffled every epoch; Keras-default initialisers (textnn.py).
Prints per epoch the training loss and per-character accuracy and on the
5,000 held-out pairs the loss, the per-character accuracy and the
whole-answer accuracy, and the epoch's time; with --target-char and
--target-answer it also names the first epoch reaching both.

    /tmp/jaxenv/bin/python benches/reference/addition_seq2seq_jax.py --epochs 30
    /tmp/jaxenv/bin/python benches/reference/addition_seq2seq_jax.py --epochs 1 --limit 2000   # a quick check
"""
import argparse
import collections
import gzip
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import textnn  # noqa: E402

jax.config.update("jax_platforms", "cpu")

QUESTION_LEN, ANSWER_LEN = 7, 4


def read_pairs(path, limit=None):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    return rows[:limit] if limit else rows


def vocabulary(pairs):
    """<pad>, <unk>, then characters by descending count, ties by first appearance."""
    counts, first = collections.Counter(), {}
    for q, a in pairs:
        for ch in q[:QUESTION_LEN] + a[:ANSWER_LEN]:
            counts[ch] += 1
            first.setdefault(ch, len(first))
    chars = sorted(counts, key=lambda c: (-counts[c], first[c]))
    return {c: i + 2 for i, c in enumerate(chars)}


def encode(pairs, ids):
    def row(s, n):
        r = [ids.get(c, 1) for c in s[:n]]
        return r + [0] * (n - len(r))
    x = np.array([row(q, QUESTION_LEN) for q, _ in pairs], np.int32)
    y = np.array([row(a, ANSWER_LEN) for _, a in pairs], np.int32)
    return x, y


def init_params(key, vocab, state, emb=16, hidden=128):
    k = jax.random.split(key, 4)
    dec_in = 2 * hidden if state else hidden
    return {"emb": textnn.embedding(k[0], vocab, emb), "enc": textnn.lstm(k[1], emb, hidden),
            "dec": textnn.lstm(k[2], dec_in, hidden), "out": textnn.dense(k[3], hidden, vocab)}


def make_logits(state):
    def logits(p, x):
        e = p["emb"][x] * (x != 0)[..., None]  # <pad> reads as zeros, as in netc
        # Every step is real (questions are space-padded): no mask.
        _, (h, c) = textnn.scan_lstm(p["enc"], e, jnp.ones(x.shape, jnp.float32))
        code = jnp.concatenate([h, c], -1) if state else h
        rep = jnp.repeat(code[:, None, :], ANSWER_LEN, axis=1)
        ys, _ = textnn.scan_lstm(p["dec"], rep, jnp.ones(rep.shape[:2], jnp.float32),
                                 state=(h, c) if state else None)
        return ys @ p["out"]["w"] + p["out"]["b"]
    return logits


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "data", "addition"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="read only the first N pairs of each file")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-state", action="store_true",
                    help="Keras's original model: the decoder reads the repeated h from zeros")
    ap.add_argument("--target-char", type=float, default=0.99)
    ap.add_argument("--target-answer", type=float, default=0.95)
    a = ap.parse_args()
    train = read_pairs(os.path.join(a.data, "addition_train.tsv.gz"), a.limit)
    test = read_pairs(os.path.join(a.data, "addition_test.tsv.gz"), a.limit)
    ids = vocabulary(train)
    vocab = 2 + len(ids)
    xtr, ytr = encode(train, ids)
    xte, yte = encode(test, ids)
    state = not a.no_state
    print(f"addition: train {len(ytr)} pairs, test {len(yte)}, {vocab} ids, "
          f"decoder from the encoder's state: {state}", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), vocab, state)
    logits = jax.jit(make_logits(state))
    train_step, _ = textnn.steps(make_logits(state))
    rng = np.random.default_rng(a.seed)
    s = textnn.adam_init(p)
    reached = None
    for e in range(a.epochs):
        t0, tot, cor, n = time.time(), 0.0, 0.0, 0.0
        for idx, rw in textnn.batches(len(ytr), a.batch, rng):
            w = np.repeat(rw[:, None], ANSWER_LEN, 1)
            p, s, v, c = train_step(p, s, xtr[idx], ytr[idx], w, a.lr)
            tot, cor, n = tot + float(v) * float(w.sum()), cor + float(c), n + float(w.sum())
        t1 = time.time()
        z = np.concatenate([np.asarray(logits(p, xte[i:i + 500])) for i in range(0, len(yte), 500)])
        logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        loss = -np.take_along_axis(logp, yte[..., None], -1).mean()
        right = z.argmax(-1) == yte
        char_acc, answer_acc = right.mean(), right.all(-1).mean()
        print(f"epoch {e + 1}: train loss {tot / n:.4f} acc {100 * cor / n:.2f}% | "
              f"test loss {loss:.4f} char acc {100 * char_acc:.2f}% answer acc "
              f"{100 * answer_acc:.2f}% | {t1 - t0:.1f} s train, {time.time() - t1:.1f} s test",
              flush=True)
        if reached is None and char_acc >= a.target_char and answer_acc >= a.target_answer:
            reached = e + 1
            print(f"reached {100 * a.target_char:.0f}% per character and "
                  f"{100 * a.target_answer:.0f}% whole answers after {reached} epochs", flush=True)


if __name__ == "__main__":
    main()
