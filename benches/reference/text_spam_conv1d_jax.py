"""The text CNN (spam_conv1d.net's model) trained in JAX, on
data/text/spam_{train,test}.tsv.gz.

Model: embedding 64 (the <pad> id reads as a zero vector, as netc's
padding id does) -> conv1d 128 filters of 5 words, valid, relu ->
global max pooling over time -> dense 2 -> softmax cross-entropy. Each
mail is its first 200 word tokens, tokenized and indexed by textdata.py's
rules (vocabulary from the training split: <pad> 0, <unk> 1, count >= 2,
at most 20,000), padded at the start as netc's `format: classification`
does. Initialisers as netc's: embeddings uniform in [-0.05, 0.05], the
convolution (it feeds a relu) He normal with fan-in 5*64, the dense layer
Glorot uniform, biases 0. Adam lr 1e-3, batch 64, reshuffled every epoch.
Prints per epoch the training loss and accuracy, the test loss and
accuracy, and the epoch's time.

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/text_spam_conv1d_jax.py --epochs 5
    ~/.cache/jaxref/bin/python benches/reference/text_spam_conv1d_jax.py --epochs 1 --limit 512   # a quick check
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import textdata
import textnn

jax.config.update("jax_platforms", "cpu")

KERNEL = 5


def init_params(key, vocab, emb=64, filters=128):
    k = jax.random.split(key, 3)
    fan_in = KERNEL * emb
    conv_w = jax.random.normal(k[1], (KERNEL, emb, filters), jnp.float32) * (2 / fan_in) ** 0.5
    return {"emb": textnn.embedding(k[0], vocab, emb),
            "conv": {"w": conv_w, "b": jnp.zeros(filters)},
            "out": textnn.dense(k[2], filters, 2)}


def logits(p, x):
    e = p["emb"][x] * (x != textdata.PAD)[..., None]
    h = lax.conv_general_dilated(e, p["conv"]["w"], (1,), "VALID",
                                 dimension_numbers=("NWC", "WIO", "NWC"))
    h = jax.nn.relu(h + p["conv"]["b"])
    return jnp.max(h, axis=1) @ p["out"]["w"] + p["out"]["b"]


def pad_at_start(x):
    """textdata pads at the end; move each row's padding to its start."""
    return np.stack([np.roll(r, int((r == textdata.PAD).sum())) for r in x])


def main():
    a = textnn.arg_parser("spam_*.tsv", "lines", epochs=5).parse_args()
    xtr, ytr, xte, yte, vocab = textdata.spam_arrays(a.data, a.limit)
    xtr, xte = pad_at_start(xtr), pad_at_start(xte)
    print(f"spam: train {len(ytr)} mails ({int(ytr.sum())} spam), test {len(yte)} ({int(yte.sum())} spam), "
          f"vocabulary {len(vocab)}, {textdata.SEQ_LEN} tokens a mail; all-ham test accuracy "
          f"{100 * (1 - yte.mean()):.2f}%", flush=True)
    p = init_params(jax.random.PRNGKey(a.seed), len(vocab))
    textnn.train(a, p, textnn.steps(logits),
                 len(ytr), lambda idx, rw: (xtr[idx], ytr[idx], rw),
                 len(yte), lambda idx, rw: (xte[idx], yte[idx], rw))


if __name__ == "__main__":
    main()
