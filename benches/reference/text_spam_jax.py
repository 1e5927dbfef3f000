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
import jax

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


def main():
    a = textnn.arg_parser("spam_*.tsv", "lines", epochs=5).parse_args()
    xtr, ytr, xte, yte, vocab = textdata.spam_arrays(a.data, a.limit)
    print(f"spam: train {len(ytr)} mails ({int(ytr.sum())} spam), test {len(yte)} ({int(yte.sum())} spam), "
          f"vocabulary {len(vocab)}, {textdata.SEQ_LEN} tokens a mail; all-ham test accuracy "
          f"{100 * (1 - yte.mean()):.2f}%", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), len(vocab))
    textnn.train(a, p, textnn.steps(logits),
                 len(ytr), lambda idx, rw: (xtr[idx], ytr[idx], rw),
                 len(yte), lambda idx, rw: (xte[idx], yte[idx], rw))


if __name__ == "__main__":
    main()
