"""
Shared pytest fixtures. Everything here is made by the tests themselves (no network, no data mirror).

    tiny_corpus          ~7 KB of varied text (prose, code, digits, a chat transcript, several scripts, emoji)
    tiny_tokenizer       a Tokenizer trained on it: 256 bytes + 100 merges + 9 special tokens = 365 ids
    tiny_tokenizer_dir   the same tokenizer saved to a temporary directory (for code that loads from disk)
    answer_tokenizer     one trained on it plus answer lines ("#### 1", a calculator call printing "#### 72"),
                         so that "####" is one token: a bigram toy model can write a "#### <n>" answer

All are session-scoped: train once, reuse everywhere. Do not mutate them.

seeded_generators (autouse) seeds torch's, random's and numpy's global generators before every test:
an input drawn without the test's own seed is the same on every run, whatever ran before it and
whichever tests -k selected. Module- and session-scoped fixtures run before it and seed their own.
"""

import random

import pytest

TINY_VOCAB_SIZE = 256 + 100 + 9


def make_tiny_corpus(seed=1234):
    """A deterministic list of documents mixing the kinds of text a chat model sees."""
    rng = random.Random(seed)
    words = ("the model learns to predict the next token from a large amount of text and then it is "
             "fine tuned on conversations so that it answers questions politely and correctly").split()
    docs = []
    for _ in range(12):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(8, 20)))
        docs.append(sentence.capitalize() + ". It's what we'll test, isn't it? " * 2)
    docs.append(
        "User: What is 12 + 30?\nAssistant: 12 + 30 = 42.\n"
        "User: And 1234 * 5678?\nAssistant: Let me compute: 1234 * 5678 = 7006652.\n" * 3
    )
    docs.append("def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, 2 * i))\n" * 3)
    docs.append(" ".join(str(rng.randrange(0, 10 ** rng.randrange(1, 8))) for _ in range(150)))
    docs.append("Le café est très bon, naïve façade. Über Größe. Ça coûte 3,50 €.\n" * 4)
    docs.append("日本語のテキストです。東京は日本の首都です。日本語、日本語。\n" * 4)
    docs.append("Привет, мир! Как дела? Всё хорошо.\n" * 3 + "مرحبا بالعالم\n" * 2 + "नमस्ते दुनिया\n" * 2)
    docs.append("emoji 🙂🙂 👍🏽 👨‍👩‍👧 🎉🎉🎉 and tabs\tand\t\ttabs, spaces     and\n\n\nnewlines\r\n")
    return docs


TEST_SEED = 0


@pytest.fixture(autouse=True)
def seeded_generators():
    import numpy as np
    import torch

    torch.manual_seed(TEST_SEED)
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)


@pytest.fixture(scope="session")
def tiny_corpus():
    return make_tiny_corpus()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_corpus):
    from nanochat.tokenizer import Tokenizer

    return Tokenizer.train_from_iterator(iter(tiny_corpus), TINY_VOCAB_SIZE)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_tokenizer.save(str(path))
    return str(path)


MARKER_CALL = "'## 72'.replace('#','##')"  # the calculator prints "#### 72"; no token of it repeats in answer_tokenizer
ANSWER_LINES = f"#### 0\n#### 1\n{MARKER_CALL}\n" * 40


@pytest.fixture(scope="session")
def answer_tokenizer(tiny_corpus):
    from nanochat.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_from_iterator(iter(tiny_corpus + [ANSWER_LINES]), TINY_VOCAB_SIZE)
    assert len(tokenizer.encode("####")) == 1, "the answer merge is missing"
    return tokenizer
