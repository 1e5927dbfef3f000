"""The part-of-speech tagger (pos_tagger.net's model) trained in JAX, on
data/text/brown_{train,test}.txt.gz.

Model: embedding 64 -> bidirectional LSTM, 64 units each way (outputs
concatenated, 128 per token) -> dense over the tags -> softmax
cross-entropy per token. Words are lower-cased and indexed by textdata.py's
rules (vocabulary from the training split: <pad> 0, <unk> 1, the 26
shape classes of unknown words (--unknown shape, the default), count >= 2,
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


def make_batch(data, idx, row_w):
    """Sentences data[idx] -> x, y [B, T] int32 and weights [B, T]; T = longest, rounded up."""
    sents = [data[i] for i in idx]
    longest = max(len(ws) for ws, _ in sents)
    length = -(-longest // BUCKET) * BUCKET
    x = textdata.pad([ws for ws, _ in sents], length)
    y = textdata.pad([ts for _, ts in sents], length)
    w = (x != textdata.PAD).astype(np.float32) * row_w[:, None]
    return x, y, w


def main():
    ap = textnn.arg_parser("brown_*.txt", "sentences", epochs=5)
    ap.add_argument("--unknown", choices=["shape", "single"], default="shape",
                    help="unknown words: shape classes (pos_tagger.net) or one <unk>")
    a = ap.parse_args()
    train, test, vocab, tags = textdata.tagger_data(a.data, a.limit, a.unknown)
    ntr = sum(len(ws) for ws, _ in train)
    nte = sum(len(ws) for ws, _ in test)
    unknown_ids = {textdata.UNK} | {vocab[c] for c in textdata.SHAPE_CLASSES if c in vocab}
    unk = sum(w in unknown_ids for ws, _ in test for w in ws)
    print(f"tagger: train {len(train)} sentences / {ntr} tokens, test {len(test)} / {nte} "
          f"({100 * unk / nte:.2f}% unknown, unknown words: {a.unknown}), vocabulary {len(vocab)}, "
          f"{len(tags)} tags", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), len(vocab), len(tags))
    order = sorted(range(len(test)), key=lambda i: len(test[i][0]))   # similar lengths together
    textnn.train(a, p, textnn.steps(logits),
                 len(train), lambda idx, rw: make_batch(train, idx, rw),
                 len(test), lambda idx, rw: make_batch(test, [order[i] for i in idx], rw))


if __name__ == "__main__":
    main()
