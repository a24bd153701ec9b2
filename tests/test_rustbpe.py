"""Tests of the rustbpe extension against references: the slow pure-Python trainer in
tests/bpe_reference.py (same merges, exactly) and tiktoken (same ids, exactly).

Run: uv run pytest tests/test_rustbpe.py          (fast, a few seconds)
     uv run pytest tests/test_rustbpe.py -m slow  (the larger random property test)
"""

import inspect
import json
import random

import pytest
import rustbpe
import tiktoken

import bpe_reference

GPT4_3_DIGITS = rustbpe.GPT4_PATTERN.replace(r"\p{N}{1,2}", r"\p{N}{1,3}")

PROSE = """\
The history of the printing press is, in many ways, the history of the modern world. Before
Gutenberg's press (c. 1440), books were copied by hand; a single Bible could take a scribe
over 3 years. By 1500, presses in 270 cities had printed 20,000,000 volumes. Don't forget:
it wasn't just books -- pamphlets, indulgences & broadsheets spread news "like wildfire".

    def area(r):   # indented code with  double  spaces
        return 3.14159 * r ** 2

Q: What's 12345 + 67890?\r\nA: It's 80235.\n\n\n
Les élèves ont étudié l'histoire naïve du café. Ünïcödé wörds, 日本語のテキスト, 中文文本,
Русский текст, ελληνικά, עברית, العربية, हिन्दी, emoji 🙂👍🏽🎉, and combining e\u0301 marks.
"""

# Small pieces that exercise the split pattern's corners.
ATOMS = [
    "a", "Z", "é", "ß", "ſ", "the", "word", " ", "  ", "     ", "\t", "\n", "\r\n", "\r", "\n\n",
    "'", "'s", "'S", "'ll", "'LL", "'Ve", "'re", "'d", "'m", "'t", "0", "12", "345", "67890",
    "٣", "²", "Ⅻ", "汉字", "日本", "😀", "👍🏽", "\u0301", "e\u0301", ".", ",", "!?", "...", "-",
    "(", ")", '"', "#", "$", "\u00a0", "\u2003", "\u3000", "\u200b", "\ufeff", "Ω", "ǅ", "ʰ",
    "𝔘", "\U0010ffff", "\x00",
]


def random_text(rng: random.Random, n_atoms: int) -> str:
    parts = []
    for _ in range(n_atoms):
        if rng.random() < 0.1:
            cp = rng.randrange(0x110000)
            if not 0xD800 <= cp < 0xE000:  # no surrogates: not valid in UTF-8
                parts.append(chr(cp))
        else:
            parts.append(rng.choice(ATOMS))
    return "".join(parts)


def real_text() -> str:
    """Real-looking text without any data files: prose above plus Python source and JSON."""
    return PROSE + inspect.getsource(json.encoder) + json.dumps({"k": list(range(50)), "s": PROSE})


def train(texts, vocab_size, pattern=None):
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return tok


def tiktoken_of(tok) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name="rustbpe-test",
        pat_str=tok.get_pattern(),
        mergeable_ranks=dict(tok.get_mergeable_ranks()),
        special_tokens={},
    )


@pytest.fixture(scope="module")
def trained():
    docs = real_text().split("\n\n") * 3
    return train(docs, 700)


# --- training equals the pure-Python reference ------------------------------------------------

CORPORA = {
    "prose": PROSE.split("\n"),
    "repeats": ["aaaa aaa aa a", "abababab baba", "1111111 22222 1212121", "    \n\n\n  x"] * 3,
    "unicode": [random_text(random.Random(seed), 60) for seed in range(8)],
}


@pytest.mark.parametrize("name", sorted(CORPORA))
@pytest.mark.parametrize("pattern", [rustbpe.GPT4_PATTERN, GPT4_3_DIGITS, r"\w+|\s+|[^\w\s]+"])
def test_merges_equal_reference(name, pattern):
    texts = CORPORA[name]
    vocab_size = 256 + 150
    expected = bpe_reference.train(texts, vocab_size, pattern)
    got = train(texts, vocab_size, pattern).get_mergeable_ranks()
    assert got == expected


def test_training_stops_when_pairs_run_out():
    tok = train(["ab ab"], 1000)
    assert tok.vocab_size == len(bpe_reference.train(["ab ab"], 1000, rustbpe.GPT4_PATTERN)) == 258


def test_buffer_size_does_not_change_the_result():
    docs = real_text().split("\n")
    a = rustbpe.Tokenizer()
    a.train_from_iterator(iter(docs), 400, buffer_size=1)
    b = rustbpe.Tokenizer()
    b.train_from_iterator(docs, 400, buffer_size=100000)
    assert a.get_mergeable_ranks() == b.get_mergeable_ranks()


# --- encoding equals tiktoken ------------------------------------------------------------------


def test_encode_equals_tiktoken_on_real_text(trained):
    enc = tiktoken_of(trained)
    text = real_text()
    assert trained.encode(text) == enc.encode_ordinary(text)
    for line in text.splitlines(keepends=True):
        assert trained.encode(line) == enc.encode_ordinary(line)


@pytest.mark.parametrize("pattern", [None, GPT4_3_DIGITS, r"\w+|\s+|[^\w\s]+"])
def test_encode_equals_tiktoken_on_random_unicode(pattern):
    tok = train(real_text().split("\n\n") + [random_text(random.Random(1), 300)], 600, pattern)
    enc = tiktoken_of(tok)
    rng = random.Random(0)
    for _ in range(300):
        text = random_text(rng, rng.randrange(1, 60))
        assert tok.encode(text) == enc.encode_ordinary(text), repr(text)
    # long runs: whitespace, digits, letters (the long-piece merge path), repeated emoji
    for text in [" " * 1000 + "x", "7" * 999, "a" * 5000, "ab" * 3000, "🙂" * 300, "\n" * 500 + " y"]:
        assert tok.encode(text) == enc.encode_ordinary(text)


def test_encode_equals_tiktoken_with_shuffled_ranks(trained):
    """Ranks that no trainer produced (merged tokens in random order): tiktoken's rule — lowest
    rank of the concatenation, whole piece first — must still be followed exactly."""
    ranks = trained.get_mergeable_ranks()
    merged = [b for b, _ in ranks[256:]]
    random.Random(3).shuffle(merged)
    shuffled = ranks[:256] + [(b, 256 + i) for i, b in enumerate(merged)]
    tok = rustbpe.Tokenizer.from_ranks(shuffled, trained.get_pattern())
    enc = tiktoken.Encoding("shuffled", pat_str=tok.get_pattern(), mergeable_ranks=dict(shuffled), special_tokens={})
    rng = random.Random(4)
    texts = [real_text()] + [random_text(rng, 80) for _ in range(200)]
    for text in texts:
        assert tok.encode(text) == enc.encode_ordinary(text)


def test_encode_equals_python_reference(trained):
    ranks = dict(trained.get_mergeable_ranks())
    text = PROSE
    assert trained.encode(text) == bpe_reference.encode(text, ranks, trained.get_pattern())


def test_encode_batch_equals_encode(trained):
    rng = random.Random(5)
    texts = [random_text(rng, rng.randrange(0, 50)) for _ in range(200)] + [real_text(), ""]
    assert trained.encode_batch(texts) == [trained.encode(t) for t in texts]


def test_decode_round_trip(trained):
    rng = random.Random(6)
    for text in [real_text(), ""] + [random_text(rng, 40) for _ in range(50)]:
        assert trained.decode_bytes(trained.encode(text)) == text.encode("utf-8")


def test_from_ranks_round_trip(trained):
    ranks = trained.get_mergeable_ranks()
    assert [r for _, r in ranks] == list(range(trained.vocab_size))
    assert [b for b, _ in ranks[:256]] == [bytes([i]) for i in range(256)]
    again = rustbpe.Tokenizer.from_ranks(ranks, trained.get_pattern())
    assert again.get_mergeable_ranks() == ranks
    assert again.get_pattern() == trained.get_pattern()
    assert again.vocab_size == trained.vocab_size
    text = real_text()
    assert again.encode(text) == trained.encode(text)


def test_untrained_tokenizer_is_bytes():
    tok = rustbpe.Tokenizer()
    assert tok.vocab_size == 256
    assert tok.get_pattern() == rustbpe.GPT4_PATTERN
    assert tok.encode("hé") == list("hé".encode("utf-8"))


# --- errors ------------------------------------------------------------------------------------


def test_vocab_size_too_small():
    for bad in (255, 0, -5):
        with pytest.raises(ValueError, match=f"at least 256 .*; got {bad}"):
            rustbpe.Tokenizer().train_from_iterator(["abc"], bad)
    with pytest.raises(ValueError, match="buffer_size must be at least 1"):
        rustbpe.Tokenizer().train_from_iterator(["abc"], 300, buffer_size=0)


def test_non_str_in_iterator():
    with pytest.raises(TypeError, match="item 2 .* is a bytes, expected str"):
        rustbpe.Tokenizer().train_from_iterator(["a", "b", b"c", "d"], 300)
    with pytest.raises(TypeError, match="iterable of str"):
        rustbpe.Tokenizer().train_from_iterator(42, 300)


def test_iterator_exception_propagates():
    def gen():
        yield "abc"
        raise RuntimeError("boom from the data loader")

    with pytest.raises(RuntimeError, match="boom"):
        rustbpe.Tokenizer().train_from_iterator(gen(), 300)


def test_unknown_id_in_decode(trained):
    with pytest.raises(ValueError, match=f"token id {trained.vocab_size} is not in the vocabulary"):
        trained.decode_bytes([1, trained.vocab_size])
    with pytest.raises(ValueError, match="token id -1"):
        trained.decode_bytes([-1])


def test_bad_ranks_and_pattern():
    ranks = [(bytes([i]), i) for i in range(256)]
    with pytest.raises(ValueError, match="single byte 7"):
        rustbpe.Tokenizer.from_ranks([r for r in ranks if r[1] != 7] + [(b"ab", 7)], rustbpe.GPT4_PATTERN)
    with pytest.raises(ValueError, match="appears twice"):
        rustbpe.Tokenizer.from_ranks(ranks + [(b"ab", 3)], rustbpe.GPT4_PATTERN)
    with pytest.raises(ValueError, match="same bytes"):
        rustbpe.Tokenizer.from_ranks(ranks + [(b"a", 256)], rustbpe.GPT4_PATTERN)
    with pytest.raises(ValueError, match="invalid split pattern"):
        rustbpe.Tokenizer.from_ranks(ranks, "(unclosed")
    with pytest.raises(ValueError, match="invalid split pattern"):
        rustbpe.Tokenizer().train_from_iterator(["abc"], 300, pattern="[")


# --- larger property test ----------------------------------------------------------------------


@pytest.mark.slow
def test_large_random_property():
    rng = random.Random(7)
    docs = [random_text(rng, 400) for _ in range(200)] + real_text().split("\n")
    tok = train(docs, 2000)
    enc = tiktoken_of(tok)
    for _ in range(3000):
        text = random_text(rng, rng.randrange(1, 200))
        assert tok.encode(text) == enc.encode_ordinary(text), repr(text)
    assert tok.encode_batch(docs) == enc.encode_ordinary_batch(docs, num_threads=2)
    small = docs[:30]
    assert train(small, 400).get_mergeable_ranks() == bpe_reference.train(small, 400, rustbpe.GPT4_PATTERN)
