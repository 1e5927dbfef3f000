"""JAX pieces shared by the text reference scripts: Keras-default
initialisers, a masked LSTM layer, Adam, and padded mini-batches.

Keras defaults, as train_cnn_jax.py follows them: embeddings uniform in
[-0.05, 0.05]; LSTM input kernel Glorot uniform, recurrent kernel
orthogonal, bias 0 except the forget gate's 1 (unit_forget_bias), gate
order i, f, c, o, sigmoid gates and tanh cell; dense kernels Glorot
uniform, bias 0; Adam with beta 0.9 / 0.999 and epsilon 1e-7 in Keras's
form.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402


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

    zeros = jnp.zeros((batch, hidden), jnp.float32)
    (h, _), ys = lax.scan(step, (zeros, zeros), (xw, m), reverse=reverse)
    return jnp.transpose(ys, (1, 0, 2)), h


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
