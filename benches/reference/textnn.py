"""JAX pieces shared by the text reference scripts: Keras-default
initialisers, a masked LSTM layer, Adam, padded mini-batches, the masked
cross-entropy with its jitted train and eval steps, the command line and
the epoch loop with its printed lines.

Keras defaults, as train_cnn_jax.py follows them: embeddings uniform in
[-0.05, 0.05]; LSTM input kernel Glorot uniform, recurrent kernel
orthogonal, bias 0 except the forget gate's 1 (unit_forget_bias), gate
order i, f, c, o, sigmoid gates and tanh cell; dense kernels Glorot
uniform, bias 0; Adam with beta 0.9 / 0.999 and epsilon 1e-7 in Keras's
form.
"""
import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

import textdata  # noqa: E402


def glorot(key, shape):
    lim = (6 / (shape[0] + shape[1])) ** 0.5
    return jax.random.uniform(key, shape, jnp.float32, -lim, lim)


def orthogonal(key, n, m):
    a = jax.random.normal(key, (max(n, m), min(n, m)), jnp.float32)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diag(r))
    return q if n >= m else q.T


def embedding(key, vocab, dim):
    return jax.random.uniform(key, (vocab, dim), jnp.float32, -0.05, 0.05)


def dense(key, n_in, n_out):
    return {"w": glorot(key, (n_in, n_out)), "b": jnp.zeros(n_out)}


def lstm(key, n_in, hidden):
    k1, k2 = jax.random.split(key)
    b = jnp.zeros(4 * hidden).at[hidden:2 * hidden].set(1.0)
    return {"w": glorot(k1, (n_in, 4 * hidden)), "u": orthogonal(k2, hidden, 4 * hidden), "b": b}


def run_lstm(p, x, mask, reverse=False):
    """x [B, T, E], mask [B, T] (1 = real step) -> (outputs [B, T, H], last h [B, H]).

    Over a masked step the state is kept and the output is 0; so with the
    padding at the end the last h is the state after the last real step,
    and with reverse=True the scan starts from zeros at the last real step.
    """
    ys, (h, _) = scan_lstm(p, x, mask, reverse=reverse)
    return ys, h


def scan_lstm(p, x, mask, state=None, reverse=False):
    """run_lstm from `state` (h, c) (zeros when None) -> (outputs, final (h, c))."""
    hidden = p["u"].shape[0]
    xw = jnp.einsum("bte,eg->tbg", x, p["w"]) + p["b"]
    m = jnp.transpose(mask)[..., None].astype(jnp.float32)
    batch = x.shape[0]

    def step(carry, inp):
        h, c = carry
        z, mt = inp
        z = z + h @ p["u"]
        i = jax.nn.sigmoid(z[:, :hidden])
        f = jax.nn.sigmoid(z[:, hidden:2 * hidden])
        g = jnp.tanh(z[:, 2 * hidden:3 * hidden])
        o = jax.nn.sigmoid(z[:, 3 * hidden:])
        c2 = f * c + i * g
        h2 = o * jnp.tanh(c2)
        h = mt * h2 + (1 - mt) * h
        c = mt * c2 + (1 - mt) * c
        return (h, c), h2 * mt

    if state is None:
        zeros = jnp.zeros((batch, hidden), jnp.float32)
        state = (zeros, zeros)
    final, ys = lax.scan(step, state, (xw, m), reverse=reverse)
    return jnp.transpose(ys, (1, 0, 2)), final


def adam_init(p):
    z = jax.tree_util.tree_map(jnp.zeros_like, p)
    return {"m": z, "v": z, "t": jnp.zeros((), jnp.float32)}


def adam_update(p, g, s, lr):
    tree = jax.tree_util.tree_map
    t = s["t"] + 1
    m = tree(lambda a, b: 0.9 * a + 0.1 * b, s["m"], g)
    v = tree(lambda a, b: 0.999 * a + 0.001 * b * b, s["v"], g)
    alpha = lr * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    p = tree(lambda w, mm, vv: w - alpha * mm / (jnp.sqrt(vv) + 1e-7), p, m, v)
    return p, {"m": m, "v": v, "t": t}


def batches(n, size, rng=None):
    """Index arrays of `size` over range(n), shuffled when rng is given, and a
    0/1 row weight: the last batch is filled up with index 0 at weight 0, so
    every example counts once and every batch has one shape."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, size):
        idx = order[s:s + size]
        w = np.ones(size, np.float32)
        if len(idx) < size:
            w[len(idx):] = 0
            idx = np.concatenate([idx, np.zeros(size - len(idx), idx.dtype)])
        yield idx, w


def nll_and_correct(z, y, w):
    """Logits z [..., C], class ids y [...] and weights w [...] (0 on padding
    and filler rows) -> (weighted mean cross-entropy, weighted correct count)."""
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z), y[..., None], -1)[..., 0]
    return jnp.sum(w * nll) / jnp.sum(w), jnp.sum(w * (jnp.argmax(z, -1) == y))


def steps(logits):
    """The jitted steps of the model logits(p, x): train_step(p, s, x, y, w,
    lr) -> (p, s, mean loss, correct) with Adam, and eval_step(p, x, y, w)
    -> (summed loss, correct)."""
    def loss_and_correct(p, x, y, w):
        return nll_and_correct(logits(p, x), y, w)

    @jax.jit
    def train_step(p, s, x, y, w, lr):
        (value, correct), g = jax.value_and_grad(loss_and_correct, has_aux=True)(p, x, y, w)
        p, s = adam_update(p, g, s, lr)
        return p, s, value, correct

    @jax.jit
    def eval_step(p, x, y, w):
        value, correct = loss_and_correct(p, x, y, w)
        return value * jnp.sum(w), correct

    return train_step, eval_step


def arg_parser(files, items, epochs):
    """The scripts' common options: --data (a folder with `files`.gz),
    --epochs, --seed, --limit (the first N `items` of each file), --batch
    and --lr."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=textdata.default_data_dir(),
                    help=f"folder with {files}.gz (or plain {files}, as in data/text/tiny)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help=f"read only the first N {items} of each file")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    return ap


def evaluate(eval_step, p, n, make_batch, batch=256):
    """(mean loss, accuracy) over the n examples, make_batch(idx, row_w) ->
    (x, y, w) giving batch idx; both are weighted by w."""
    tot = cor = total_w = 0.0
    for idx, rw in batches(n, batch):
        x, y, w = make_batch(idx, rw)
        v, c = eval_step(p, x, y, w)
        tot, cor, total_w = tot + float(v), cor + float(c), total_w + float(w.sum())
    return tot / total_w, cor / total_w


def test_summary(loss, acc):
    return f"test loss {loss:.4f} acc {100 * acc:.2f}%"


def cosine(lr, epochs, min_lr=0.0):
    """netc's `schedule: cosine(min_lr)`: epoch e (from 0) runs at
    min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2."""
    return lambda e: min_lr + (lr - min_lr) * (1 + np.cos(np.pi * e / epochs)) / 2


def train(a, p, step_fns, n_train, train_batch, n_test, test_batch, summary=test_summary,
          lr_at=None, drop_last=False):
    """a.epochs epochs of Adam (lr a.lr, or lr_at(epoch) from epoch 0) over
    batches of a.batch, reshuffled each epoch (seed a.seed); train_batch /
    test_batch(idx, row_w) -> (x, y, w). With drop_last, an epoch is
    n_train // a.batch full batches, as netc's is (the last, partial one is
    left out). Prints a line an epoch: the training loss and accuracy,
    summary(test loss, test accuracy), and the times. Returns the trained
    parameters."""
    train_step, eval_step = step_fns
    rng = np.random.default_rng(a.seed)
    s = adam_init(p)
    for e in range(a.epochs):
        t0, tot, cor, n = time.time(), 0.0, 0.0, 0.0
        lr = a.lr if lr_at is None else float(lr_at(e))
        for idx, rw in batches(n_train, a.batch, rng):
            if drop_last and rw.min() == 0:
                continue
            x, y, w = train_batch(idx, rw)
            p, s, v, c = train_step(p, s, x, y, w, lr)
            tot, cor, n = tot + float(v) * float(w.sum()), cor + float(c), n + float(w.sum())
        t1 = time.time()
        te_loss, te_acc = evaluate(eval_step, p, n_test, test_batch)
        print(f"epoch {e + 1}: train loss {tot / n:.4f} acc {100 * cor / n:.2f}% | "
              f"{summary(te_loss, te_acc)} | {t1 - t0:.1f} s train, "
              f"{time.time() - t1:.1f} s test", flush=True)
    return p
