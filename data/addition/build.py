#!/usr/bin/env python3
"""Generate the Keras "addition" data set: "535+61" -> "596".

Python 3 standard library only. Deterministic: the same seed gives
byte-identical files on every machine (random.Random's integer draws are
stable across Python versions; gzip level 9, no file name, mtime 0).

The generator is Keras's `addition_rnn` example's (keras-io,
examples/nlp/addition_rnn.py) with a seed and a held-out split:

- each operand has 1 to 3 digits, the digit count drawn uniformly, then
  each digit uniformly (so "007" is 7; small numbers are common);
- a pair and its swap are the same question (key: the sorted pair); a
  pair seen before is drawn again, so every question is distinct;
- the question "a+b" is padded with spaces at the end to 7 characters
  (3 + 1 + 3), the answer str(a + b) to 4 characters (3 digits + 1 carry);
- the first 50,000 distinct pairs drawn are the training set, the next
  5,000 the held-out test set (so no test question is in the training set).

Neither side is reversed (Keras's example reverses the question by
default; netc's example reads it as written).

Files, one pair per line, `question<TAB>answer`, netc's `format: pairs`:

  addition_train.tsv.gz   50,000 pairs
  addition_test.tsv.gz     5,000 pairs

Usage:

  python3 data/addition/build.py              # seed 1337, writes data/addition/
  python3 data/addition/build.py --seed 7 --train 1000 --test 100 --out /tmp/add
"""
import argparse
import gzip
import os
import random

DIGITS = 3
QUESTION_LEN = DIGITS + 1 + DIGITS
ANSWER_LEN = DIGITS + 1


def number(rng):
    """An operand: 1 to DIGITS digits, each uniform (leading zeros vanish)."""
    return int("".join(rng.choice("0123456789") for _ in range(rng.randint(1, DIGITS))))


def pairs(seed, count):
    """`count` distinct (question, answer) strings, padded with spaces."""
    rng = random.Random(seed)
    seen = set()
    out = []
    while len(out) < count:
        a, b = number(rng), number(rng)
        key = tuple(sorted((a, b)))
        if key in seen:
            continue
        seen.add(key)
        question = f"{a}+{b}".ljust(QUESTION_LEN)
        answer = str(a + b).ljust(ANSWER_LEN)
        out.append((question, answer))
    return out


def write(path, rows):
    text = "".join(f"{q}\t{a}\n" for q, a in rows).encode("utf-8")
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as f:
            f.write(text)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=5_000)
    ap.add_argument("--out", default=here)
    args = ap.parse_args()
    rows = pairs(args.seed, args.train + args.test)
    os.makedirs(args.out, exist_ok=True)
    write(os.path.join(args.out, "addition_train.tsv.gz"), rows[: args.train])
    write(os.path.join(args.out, "addition_test.tsv.gz"), rows[args.train :])
    print(f"wrote {args.train} training and {args.test} test pairs to {args.out}")


if __name__ == "__main__":
    main()
