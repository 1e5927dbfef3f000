#!/usr/bin/env python3
"""Writes an MNIST-layout IDX data set (Fashion-MNIST from Debian's
`dataset-fashion-mnist`, by default) out as image folders, the layout
Keras's `image_dataset_from_directory` reads and `netc train` takes as
`data: "DIR"`:

    OUT/train/<class>/<index>.png
    OUT/test/<class>/<index>.png

Grey 8-bit PNGs written with the standard library only (zlib), one folder
per class named by its Fashion-MNIST label (`0_tshirt`, `1_trouser`, ...),
so the folders sort in label order and the class indices match the IDX
labels.

    sudo apt-get install dataset-fashion-mnist     # or: apt-get download + dpkg -x
    python3 data/fashion_png/write_pngs.py --idx /usr/share/datasets/fashion-mnist --out /tmp/fashion-png
    netc train examples/fashion_cnn.net --data /tmp/fashion-png
"""
import argparse
import gzip
import os
import struct
import zlib

NAMES = ["0_tshirt", "1_trouser", "2_pullover", "3_dress", "4_coat",
         "5_sandal", "6_shirt", "7_sneaker", "8_bag", "9_boot"]


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    _, kind, ndim = struct.unpack(">HBB", data[:4])
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def find(folder, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{folder}: no {stem}[.gz]")


def png(width, height, pixels):
    """A grey 8-bit PNG of the row-major bytes `pixels`."""
    raw = b"".join(b"\0" + pixels[r * width:(r + 1) * width] for r in range(height))

    def chunk(tag, body):
        c = struct.pack(">I", len(body)) + tag + body
        return c + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    head = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def write_split(idx, prefix, out):
    (n, h, w), images = read_idx(find(idx, f"{prefix}-images-idx3-ubyte"))
    (m,), labels = read_idx(find(idx, f"{prefix}-labels-idx1-ubyte"))
    assert n == m, f"{prefix}: {n} images but {m} labels"
    for name in NAMES:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    for i in range(n):
        path = os.path.join(out, NAMES[labels[i]], f"{i:05d}.png")
        with open(path, "wb") as f:
            f.write(png(w, h, images[i * h * w:(i + 1) * h * w]))
    print(f"{out}: {n} images of {h}x{w}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idx", default="/usr/share/datasets/fashion-mnist",
                    help="folder with train-* and t10k-* IDX files")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    write_split(a.idx, "train", os.path.join(a.out, "train"))
    write_split(a.idx, "t10k", os.path.join(a.out, "test"))


if __name__ == "__main__":
    main()
