#!/usr/bin/env python3
"""Rebuild data/japanese_vowels/ from the aeon wheel on PyPI.

Python 3 standard library plus pip (for `pip download`). Deterministic:
the two .ts files are copied out of the wheel unchanged (their SHA-256 is
checked) and written gzip-compressed at level 9 with no file name and
mtime 0, as `gzip -9n` does (header `1f 8b 08 00 00 00 00 00 02 ff`), so
the compressed bytes depend only on the content and the zlib build (the
same rule as data/text/build.py).

Usage:

  python3 data/japanese_vowels/fetch.py                 # pip download aeon==1.6.0 into a temp dir
  python3 data/japanese_vowels/fetch.py --wheel aeon-1.6.0-py3-none-any.whl
  python3 data/japanese_vowels/fetch.py --out /tmp/jv   # write elsewhere
"""
import argparse
import glob
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "aeon==1.6.0"
WHEEL_SHA256 = "d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409"
FOLDER = "aeon/datasets/data/JapaneseVowels/"
# The uncompressed files, as the wheel ships them.
FILES = {
    "JapaneseVowels_TRAIN.ts": "68a430eabd919cc77f40b1f5f3bc0dcafacc1486bca9260785aeb7d262cc78cd",
    "JapaneseVowels_TEST.ts": "b3d41d6a0ca3bcad3afb9ca7d4365382aa51341e2e58bae2a574babdda5b9462",
}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def download(tmp):
    """`pip download --no-deps aeon==1.6.0` into `tmp`; the wheel's path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "-d", tmp, PACKAGE],
        check=True,
    )
    wheels = glob.glob(os.path.join(tmp, "aeon-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one aeon wheel in {tmp}, found {wheels}")
    return wheels[0]


def gzip_bytes(data):
    """Level 9, no file name, mtime 0: a fixed header, as `gzip -9n`."""
    raw = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as f:
        f.write(data)
    return raw.getvalue()


def series(text):
    """(count, min length, max length, dimensions, labels) of a .ts file's series."""
    rows = text.split("@data", 1)[1].split()
    lengths = [len(r.split(":")[0].split(",")) for r in rows]
    dims = {r.count(":") for r in rows}
    labels = sorted({r.rsplit(":", 1)[1] for r in rows}, key=int)
    return len(rows), min(lengths), max(lengths), dims, labels


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", help="an aeon-1.6.0 wheel already downloaded")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download(tmp)
        with open(wheel, "rb") as f:
            got = sha256(f.read())
        if got != WHEEL_SHA256:
            print(f"warning: {wheel} has SHA-256 {got}, not the {PACKAGE} wheel's "
                  f"{WHEEL_SHA256}", file=sys.stderr)
        with zipfile.ZipFile(wheel) as z:
            for name, want in FILES.items():
                data = z.read(FOLDER + name)
                if sha256(data) != want:
                    sys.exit(f"{name} in {wheel} has SHA-256 {sha256(data)}, not {want}")
                packed = gzip_bytes(data)
                path = os.path.join(args.out, name + ".gz")
                with open(path, "wb") as f:
                    f.write(packed)
                n, lo, hi, dims, labels = series(data.decode("ascii"))
                print(f"{path}: {len(packed):,} bytes ({len(data):,} uncompressed); "
                      f"{n} series of {lo}-{hi} steps, {dims} dimensions, labels {labels}")


if __name__ == "__main__":
    main()
