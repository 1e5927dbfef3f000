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
import math

import jax
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


def weights(y, row_w):
    return (y != textdata.PAD).astype(np.float32) * row_w[:, None]


def held_out_summary(loss, acc):
    return f"held-out loss {loss:.4f} acc {100 * acc:.2f}% bits/char {loss / math.log(2):.3f}"


def main():
    a = textnn.arg_parser("words_*.txt", "words", epochs=10).parse_args()
    tr_path = textdata.data_file(a.data, "words_train.txt")
    te_path = textdata.data_file(a.data, "words_test.txt")
    length = 1 + max(len(w) for f in (tr_path, te_path) for w in textdata.read_lines(f, a.limit))
    xtr, ytr = textdata.char_arrays(tr_path, a.limit, length)
    xte, yte = textdata.char_arrays(te_path, a.limit, length)
    print(f"autocomplete: train {len(ytr)} words / {int((ytr != 0).sum())} predictions, "
          f"test {len(yte)} / {int((yte != 0).sum())}, {textdata.N_CHARS} classes, {length} steps",
          flush=True)
    p = init_params(jax.random.PRNGKey(a.seed))
    textnn.train(a, p, textnn.steps(logits),
                 len(ytr), lambda idx, rw: (xtr[idx], ytr[idx], weights(ytr[idx], rw)),
                 len(yte), lambda idx, rw: (xte[idx], yte[idx], weights(yte[idx], rw)),
                 summary=held_out_summary)


if __name__ == "__main__":
    main()
