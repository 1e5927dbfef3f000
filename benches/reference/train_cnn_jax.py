"""The course CNN trained the Keras way in JAX, on the IDX files netc reads.

Used to check what accuracy `examples/course_cnn.net` should reach: Keras's
defaults are Glorot-uniform kernels, zero biases, Adam (lr 1e-3, beta 0.9 /
0.999, epsilon 1e-7 in Keras's form), x/255, reshuffling every epoch and a
softmax cross-entropy. `--init he` uses He normal on the ReLU layers, as
netc does. `--schedule cosine` anneals the learning rate per epoch to 0 as
netc's `cosine(min_lr: 0.0)` does. Prints the test accuracy after each epoch.

    python3 -m venv ~/.cache/jaxref && ~/.cache/jaxref/bin/pip install numpy jax jaxlib
    ~/.cache/jaxref/bin/python benches/reference/train_cnn_jax.py data/mnist-10k \
        --seeds 0,1,2,3,4 --batch 32 --lr 0.005 --schedule cosine
"""
import argparse
import gzip
import os
import struct
import time

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

jax.config.update("jax_platforms", "cpu")


def read_idx(path):
    with gzip.open(path) as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def glorot(key, shape, fan_in, fan_out):
    lim = (6 / (fan_in + fan_out)) ** 0.5
    return jax.random.uniform(key, shape, jnp.float32, -lim, lim)


def he(key, shape, fan_in, _fan_out):
    return jax.random.normal(key, shape, jnp.float32) * (2 / fan_in) ** 0.5


def init_params(key, init):
    k = jax.random.split(key, 3)
    relu_init = glorot if init == "glorot" else he
    return {"cw": relu_init(k[0], (3, 3, 1, 32), 9, 9 * 32), "cb": jnp.zeros(32),
            "w1": relu_init(k[1], (5408, 128), 5408, 128), "b1": jnp.zeros(128),
            "w2": glorot(k[2], (128, 10), 128, 10), "b2": jnp.zeros(10)}


def logits(p, x):
    y = lax.conv_general_dilated(x, p["cw"], (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y + p["cb"])
    n, h, w, c = y.shape
    y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4)).reshape(n, -1)
    y = jax.nn.relu(y @ p["w1"] + p["b1"])
    return y @ p["w2"] + p["b2"]


def loss(p, x, y):
    logp = jax.nn.log_softmax(logits(p, x))
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], 1))


@jax.jit
def adam_step(p, m, v, t, x, y, lr):
    value, g = jax.value_and_grad(loss)(p, x, y)
    tree = jax.tree_util.tree_map
    m = tree(lambda a, b: 0.9 * a + 0.1 * b, m, g)
    v = tree(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
    alpha = lr * jnp.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    p = tree(lambda w, mm, vv: w - alpha * mm / (jnp.sqrt(vv) + 1e-7), p, m, v)
    return p, m, v, value


@jax.jit
def accuracy(p, x, y):
    return jnp.mean(jnp.argmax(logits(p, x), -1) == y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data", help="folder with train-*/t10k-* IDX .gz files")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--init", choices=["glorot", "he"], default="glorot")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", choices=["none", "cosine"], default="none")
    a = ap.parse_args()
    xtr = read_idx(f"{a.data}/train-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255
    ytr = read_idx(f"{a.data}/train-labels-idx1-ubyte.gz").astype(np.int32)
    xte = read_idx(f"{a.data}/t10k-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255
    yte = read_idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int32)
    for seed in (int(s) for s in a.seeds.split(",")):
        rng = np.random.default_rng(seed)
        p = init_params(jax.random.PRNGKey(seed), a.init)
        m = jax.tree_util.tree_map(jnp.zeros_like, p)
        v = jax.tree_util.tree_map(jnp.zeros_like, p)
        t, accs, t0 = 0, [], time.time()
        for e in range(a.epochs):
            order = rng.permutation(len(ytr))
            lr = a.lr if a.schedule == "none" else 0.5 * a.lr * (1 + np.cos(np.pi * e / a.epochs))
            for s in range(0, len(ytr) - a.batch + 1, a.batch):
                i = order[s:s + a.batch]
                t += 1
                p, m, v, _ = adam_step(p, m, v, t, xtr[i], ytr[i], lr)
            accs.append(float(accuracy(p, xte, yte)))
        print(f"seed {seed} init {a.init} batch {a.batch} lr {a.lr} {a.schedule}: test accuracy per epoch",
              " ".join(f"{x * 100:.2f}" for x in accs), f"({(time.time() - t0) / a.epochs:.2f} s/epoch)",
              flush=True)


if __name__ == "__main__":
    main()
