"""The part-of-speech tagger (pos_tagger.net's model) trained in JAX, on
data/text/brown_{train,test}.txt.gz.

Model: embedding 64 -> bidirectional LSTM, 64 units each way (outputs
concatenated, 128 per token) -> dense over the tags -> softmax
cross-entropy per token. Words are lower-cased and indexed by textdata.py's
rules (vocabulary from the training split: <pad> 0, <unk> 1, count >= 2,
at most 20,000); tags by descending training count. Loss and accuracy
count real tokens only (padding excluded). Adam lr 1e-3, batch 64
sentences, reshuffled every epoch; a batch is padded to its longest
sentence rounded up to a multiple of 16 (so few shapes are compiled).
Prints per epoch the training loss and token accuracy, the test loss and
token accuracy, and the epoch's time. For comparison: the most-frequent-tag
baseline on the test split is 90.72 % (data/text/README.md).

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/text_tagger_jax.py --epochs 5
    ~/.cache/jaxref/bin/python benches/reference/text_tagger_jax.py --epochs 1 --limit 1000   # a quick check
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import textdata
import textnn

jax.config.update("jax_platforms", "cpu")

BUCKET = 16


def init_params(key, vocab, tags, emb=64, hidden=64):
    k = jax.random.split(key, 4)
    return {"emb": textnn.embedding(k[0], vocab, emb), "fwd": textnn.lstm(k[1], emb, hidden),
            "bwd": textnn.lstm(k[2], emb, hidden), "out": textnn.dense(k[3], 2 * hidden, tags)}


def logits(p, x):
    mask = x != textdata.PAD
    e = p["emb"][x]
    hf, _ = textnn.run_lstm(p["fwd"], e, mask)
    hb, _ = textnn.run_lstm(p["bwd"], e, mask, reverse=True)
    return jnp.concatenate([hf, hb], -1) @ p["out"]["w"] + p["out"]["b"]


def loss_and_correct(p, x, y, w):
    """w [B, T]: 1 on real tokens of real rows. Returns (mean loss, correct count)."""
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


def make_batch(data, idx, row_w):
    """Sentences data[idx] -> x, y [B, T] int32 and weights [B, T]; T = longest, rounded up."""
    sents = [data[i] for i in idx]
    longest = max(len(ws) for ws, _ in sents)
    length = -(-longest // BUCKET) * BUCKET
    x = textdata.pad([ws for ws, _ in sents], length)
    y = textdata.pad([ts for _, ts in sents], length)
    w = (x != textdata.PAD).astype(np.float32) * row_w[:, None]
    return x, y, w


def evaluate(p, data, batch):
    tot = cor = n = 0.0
    order = sorted(range(len(data)), key=lambda i: len(data[i][0]))   # similar lengths together
    for idx, rw in textnn.batches(len(data), batch):
        x, y, w = make_batch(data, [order[i] for i in idx], rw)
        v, c = eval_step(p, x, y, w)
        tot, cor, n = tot + float(v), cor + float(c), n + float(w.sum())
    return tot / n, cor / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=textdata.default_data_dir(),
                    help="folder with brown_*.txt.gz (or plain brown_*.txt, as in data/text/tiny)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="read only the first N sentences of each file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    a = ap.parse_args()
    train, test, vocab, tags = textdata.tagger_data(a.data, a.limit)
    ntr = sum(len(ws) for ws, _ in train)
    nte = sum(len(ws) for ws, _ in test)
    unk = sum(w == textdata.UNK for ws, _ in test for w in ws)
    print(f"tagger: train {len(train)} sentences / {ntr} tokens, test {len(test)} / {nte} "
          f"({100 * unk / nte:.2f}% <unk>), vocabulary {len(vocab)}, {len(tags)} tags", flush=True)
    rng = np.random.default_rng(a.seed)
    p = init_params(jax.random.PRNGKey(a.seed), len(vocab), len(tags))
    s = textnn.adam_init(p)
    for e in range(a.epochs):
        t0, tot, cor, n = time.time(), 0.0, 0.0, 0.0
        for idx, rw in textnn.batches(len(train), a.batch, rng):
            x, y, w = make_batch(train, idx, rw)
            p, s, v, c = train_step(p, s, x, y, w, a.lr)
            tot, cor, n = tot + float(v) * float(w.sum()), cor + float(c), n + float(w.sum())
        t1 = time.time()
        te_loss, te_acc = evaluate(p, test, 256)
        print(f"epoch {e + 1}: train loss {tot / n:.4f} acc {100 * cor / n:.2f}% | "
              f"test loss {te_loss:.4f} acc {100 * te_acc:.2f}% | {t1 - t0:.1f} s train, "
              f"{time.time() - t1:.1f} s test", flush=True)


if __name__ == "__main__":
    main()
