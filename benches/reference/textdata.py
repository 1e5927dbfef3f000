"""Text-data rules shared by the text reference scripts (text_*_jax.py).

The netc text examples must read data/text/ by the same rules, stated here
once (data/text/README.md describes the files themselves; all are ASCII,
gzip-compressed as *.gz except the plain fixtures in data/text/tiny/):

Word tokens (spam_*.tsv.gz texts)
    Lower-case the text. A token is a maximal run of the characters a-z,
    0-9 and the apostrophe ', or any other single character that is not a
    space; spaces separate tokens and are dropped. So
    "Don't click: www.x.com!" -> don't click : www . x . com !
    A mail is its first 200 tokens (SEQ_LEN); shorter mails are padded
    with <pad> at the end. Labels: ham = 0, spam = 1.

Tagged tokens (brown_*.txt.gz)
    One sentence a line; tokens separated by single spaces; each token is
    split at its LAST "/" into word and tag. The word is looked up
    lower-cased as a whole (not split again by the word tokenizer), its
    shape class taken as written; the tag is kept as is.

Word vocabulary (spam and tagger alike; from the training split only)
    index 0 <pad>, 1 <unk>, then every token whose training count is at
    least 2, by descending count, ties by first appearance in the training
    file; at most 20,000 entries in all, the two specials included. Any
    other token (rarer, cut off, or unseen) is <unk>.
    With unknown="shape" (the tagger; netc's `text: word(unknown: shape)`)
    the 26 shape classes of shape_class() follow <unk> as special entries
    (ids 2..27, counted in the 20,000), and an other token is its shape
    class, from the word as written, or <unk> when no rule matches.

Tags (tagger)
    The tags of the training split by descending count, ties by first
    appearance; indices from 0, no special entries (the 93 tags of
    data/text/README.md: NN = 0, IN = 1, AT = 2, ...). Tags found only in
    the test split (none in the shipped files; possible with --limit) come
    after them, in order of appearance. Padded positions carry tag 0 and
    weight 0.

Characters (autocomplete; words_*.txt.gz, one word of a-z a line)
    index 0 <pad>, 1 <eow> (end of word), then a..z = 2..27: 28 classes.
    A word w of n letters is the input sequence <eow> w1 .. wn (the
    <eow> in front stands for "start of a word") and the target sequence
    w1 .. wn <eow>: n + 1 predictions, all of them scored. Padded with
    <pad> (input and target) to the longest word + 1 = 23 steps; padded
    steps carry weight 0.

Batching: sequences are padded at the END; the LSTMs keep their state
unchanged over padded steps (masked), so the last state of a sequence is
its state after its last real token, and a backward LSTM starts from zeros
at the last real token.
"""
import collections
import gzip
import os
import re

import numpy as np

PAD, UNK = 0, 1
MAX_VOCAB = 20000
MIN_COUNT = 2
SEQ_LEN = 200
EOW = 1
CHARS = "abcdefghijklmnopqrstuvwxyz"
N_CHARS = 2 + len(CHARS)
TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


def default_data_dir():
    """data/text of the repository this file is in."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "text")


def data_file(data_dir, name):
    """data_dir/name.gz, the shipped (compressed) file; data_dir/name when
    only that plain file is there (data/text/tiny/, or files unpacked by hand)."""
    gz = os.path.join(data_dir, name + ".gz")
    plain = os.path.join(data_dir, name)
    return plain if not os.path.exists(gz) and os.path.exists(plain) else gz


def open_text(path):
    """A data file for reading as ASCII text; gzip when the name ends in .gz."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="ascii")
    return open(path, encoding="ascii")


def tokenize(text):
    return TOKEN.findall(text.lower())


def read_lines(path, limit=None):
    with open_text(path) as f:
        lines = f.read().splitlines()
    return lines[:limit] if limit else lines


def ranked(items):
    """Items by descending count, ties by first appearance; with their counts."""
    counts = collections.Counter(items)      # a Counter keeps first-appearance order
    return sorted(counts.items(), key=lambda kv: -kv[1])


SUFFIXES = ["ing", "ed", "ly", "ion", "ness", "ment", "ity", "ism", "ist", "ous", "ive", "able",
            "ible", "al", "ful", "less", "ic", "est", "er", "ize", "ise", "ian", "s"]
SHAPE_CLASSES = ["<unk-num>", "<unk-cap>", "<unk-hyphen>"] + [f"<unk-{x}>" for x in SUFFIXES]


def shape_class(word):
    """The class of an unknown word as written, or None for <unk>: the first
    rule that matches of a digit, an upper-case first letter, a hyphen, and
    the suffixes in SUFFIXES order (leaving >= 3 letters; "s" not after "s")."""
    if any(c.isdigit() for c in word):
        return "<unk-num>"
    if word[:1].isupper():
        return "<unk-cap>"
    if "-" in word:
        return "<unk-hyphen>"
    low = word.lower()
    for x in SUFFIXES:
        if low.endswith(x) and len(low) >= len(x) + 3 and not (x == "s" and low.endswith("ss")):
            return f"<unk-{x}>"
    return None


def build_vocab(sequences, unknown="single"):
    """Token -> index by the word-vocabulary rule above (tokens counted
    lower-cased)."""
    vocab = {"<pad>": PAD, "<unk>": UNK}
    if unknown == "shape":
        for c in SHAPE_CLASSES:
            vocab[c] = len(vocab)
    for tok, n in ranked(t.lower() for seq in sequences for t in seq):
        if n < MIN_COUNT or len(vocab) == MAX_VOCAB:
            break
        vocab[tok] = len(vocab)
    return vocab


def encode(seq, vocab):
    """Ids of the tokens: looked up lower-cased, else their shape class when
    the vocabulary has the classes, else <unk>."""
    shapes = "<unk-num>" in vocab
    out = []
    for t in seq:
        i = vocab.get(t.lower())
        if i is None:
            i = vocab.get(shape_class(t), UNK) if shapes else UNK
        out.append(i)
    return out


def pad(seqs, length, value=0):
    out = np.full((len(seqs), length), value, np.int32)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, :len(s)] = s
    return out


# ---------------------------------------------------------------- spam

def read_spam(path, limit=None):
    """-> (token lists, labels int32: ham 0, spam 1)."""
    toks, labels = [], []
    for line in read_lines(path, limit):
        label, text = line.split("\t", 1)
        labels.append({"ham": 0, "spam": 1}[label])
        toks.append(tokenize(text)[:SEQ_LEN])
    return toks, np.array(labels, np.int32)


def spam_arrays(data_dir, limit=None):
    """-> (x_train, y_train, x_test, y_test, vocab); x: [N, 200] int32, 0-padded."""
    tr, ytr = read_spam(data_file(data_dir, "spam_train.tsv"), limit)
    te, yte = read_spam(data_file(data_dir, "spam_test.tsv"), limit)
    vocab = build_vocab(tr)
    return (pad([encode(s, vocab) for s in tr], SEQ_LEN), ytr,
            pad([encode(s, vocab) for s in te], SEQ_LEN), yte, vocab)


# ---------------------------------------------------------------- tagger

def read_tagged(path, limit=None):
    """-> list of sentences, each a list of (word as written, tag)."""
    sents = []
    for line in read_lines(path, limit):
        sent = []
        for tok in line.split(" "):
            word, tag = tok.rsplit("/", 1)
            sent.append((word, tag))
        sents.append(sent)
    return sents


def tagger_data(data_dir, limit=None, unknown="shape"):
    """-> (train, test, vocab, tags); train/test: lists of (word ids, tag ids)."""
    tr = read_tagged(data_file(data_dir, "brown_train.txt"), limit)
    te = read_tagged(data_file(data_dir, "brown_test.txt"), limit)
    vocab = build_vocab(([w for w, _ in s] for s in tr), unknown)
    tags = {t: i for i, (t, _) in enumerate(ranked(t for s in tr for _, t in s))}
    for t in (t for s in te for _, t in s):
        tags.setdefault(t, len(tags))

    def enc(sents):
        return [(encode([w for w, _ in s], vocab), [tags[t] for _, t in s]) for s in sents]
    return enc(tr), enc(te), vocab, tags


# ---------------------------------------------------------------- characters

def char_ids(word):
    return [2 + CHARS.index(c) for c in word]


def char_arrays(path, limit=None, length=None):
    """-> (inputs, targets) [N, T] int32: <eow> w1..wn -> w1..wn <eow>, 0-padded."""
    words = read_lines(path, limit)
    length = length or max(map(len, words)) + 1
    xs = [[EOW] + char_ids(w) for w in words]
    ys = [char_ids(w) + [EOW] for w in words]
    return pad(xs, length), pad(ys, length)
