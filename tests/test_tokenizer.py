"""
Tests for nanochat/tokenizer.py: training and vocabulary layout, save/load, encode/decode against
tiktoken built from the same ranks, the token-bytes table, conversation rendering and masks, the
Hugging Face export against our own ids, and clear errors on bad input.

Run: uv run pytest tests/test_tokenizer.py        (fast: well under a minute)
"""

import base64
import os
import pickle
import random

import numpy as np
import pytest
import tiktoken
import tokenizers
import torch

from nanochat.tokenizer import HF_SPECIAL_TOKENS, SPECIAL_TOKENS, Tokenizer, get_token_bytes, get_tokenizer

from conftest import TINY_VOCAB_SIZE


# -----------------------------------------------------------------------------
# text generators

REAL_TEXT = [
    "Hello, world! This is a test of the tokenizer.",
    "It's a dog's life; they'll say we've done it. I'M SHOUTING, YOU'RE NOT. 'S 'LL 'VE",
    "def f(x):\n    if x > 10:\n        return x ** 2  # square\n    return -x\n",
    "Prices rose 3.75% to $1,234,567.89 in 2024; call 555-0123 or +44 20 7946 0958.",
    "Le café crème coûte 2,50 € à Paris. Größenwahn über alles. ſtrange long s.",
    "東京は日本の首都です。今日は良い天気ですね。",
    "Привет, как дела? Всё отлично!  مرحبا  नमस्ते",
    "emoji: 🙂 👍🏽 👨‍👩‍👧‍👦 🇫🇷 and combining: é = e\u0301, Å = A\u030a",
    "   leading spaces, trailing spaces   \n\n\n\t\ttabs\r\nwindows line\n \n",
    "<|bos|><|user_start|>fake specials in plain text<|user_end|><|assistant_end|>",
    "",
]

# pieces that stress the split regex and BPE merge order: whitespace runs, digit runs, case folding
# (Kelvin sign, long s, dotted I), zero-width joiners, combining marks, astral-plane characters
PIECES = [" ", "  ", "    ", "\n", "\n\n", "\r\n", "\t", " \n ", "0", "12", "345", "6789", "'s", "'S", "'ll",
          "'Ve", "ſ", "\u212a", "İ", "\u200d", "\u0301", "🙂", "👍🏽", "日本", "é", "a", "the", " the", "Hello",
          "!", "?!", "...", "<|", "|>", "bos", "<|bos|>",
          # whitespace and look-alikes where regex engines' ideas of \s and \p{L} could disagree
          "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u3000", "\ufeff", "\u200b", "ǅ", "²", "①"]


def random_unicode(rng, max_len=40):
    out = []
    for _ in range(rng.randrange(0, max_len)):
        r = rng.random()
        if r < 0.45:
            out.append(rng.choice(PIECES))
        elif r < 0.7:
            out.append(chr(rng.randrange(0x20, 0x7F)))
        elif r < 0.9:
            out.append(chr(rng.randrange(0xA0, 0x3000)))
        else:
            cp = rng.randrange(0x3000, 0x10FFFF)
            out.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "x")  # no lone surrogates
    return "".join(out)


def random_texts(seed, n):
    rng = random.Random(seed)
    return [random_unicode(rng) for _ in range(n)] + REAL_TEXT


def tiktoken_reference(tok):
    """tiktoken built from our ranks, pattern and special ids: the reference encoder."""
    specials = {name: tok.encode_special(name) for name in SPECIAL_TOKENS}
    return tiktoken.Encoding("ref", pat_str=tok.get_pattern(), mergeable_ranks=tok.get_mergeable_ranks(),
                             special_tokens=specials)


@pytest.fixture(scope="module")
def overlap_tokenizer():
    """Trained on words over a 2-letter alphabet: many tokens that overlap and share prefixes, so the
    order in which pairs merge (and ties between equal ranks) decides almost every encoding."""
    rng = random.Random(7)
    words = ["".join(rng.choice("aab") for _ in range(rng.randrange(1, 25))) for _ in range(2000)]
    return Tokenizer.train_from_iterator([" ".join(words)], 256 + 9 + 400)


# -----------------------------------------------------------------------------
# training and vocabulary layout

def test_vocab_layout(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.get_vocab_size() == TINY_VOCAB_SIZE
    n = TINY_VOCAB_SIZE - len(SPECIAL_TOKENS)
    # the special tokens take the last ids, in order, after every merged token
    assert [tok.encode_special(name) for name in SPECIAL_TOKENS] == list(range(n, TINY_VOCAB_SIZE))
    assert tok.get_bos_token_id() == n
    assert tok.get_special_tokens() == SPECIAL_TOKENS
    # every byte is a token, and merged tokens are longer than one byte
    ranks = tok.get_mergeable_ranks()
    assert sorted(ranks.values()) == list(range(n))
    assert {bytes([b]) for b in range(256)} <= set(ranks)
    assert sum(len(t) >= 2 for t in ranks) == n - 256


def test_vocab_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="too small.*at least 265"):
        Tokenizer.train_from_iterator(["hello world"], 264)
    with pytest.raises(TypeError, match="vocab_size"):
        Tokenizer.train_from_iterator(["hello world"], 300.0)


def test_smallest_vocab_has_no_merges():
    tok = Tokenizer.train_from_iterator(["hello hello hello"], 265)
    assert tok.get_vocab_size() == 265
    assert tok.encode("hello") == list(b"hello")


def test_small_corpus_gives_smaller_vocab_with_specials_last():
    tok = Tokenizer.train_from_iterator(["abab"], 400)  # only a couple of pairs to merge
    n = tok.get_vocab_size() - len(SPECIAL_TOKENS)
    assert 256 < n < 400 - len(SPECIAL_TOKENS)
    assert tok.get_bos_token_id() == n
    assert tok.decode(tok.encode("abab", prepend="<|bos|>")) == "<|bos|>abab"


def test_non_string_in_iterator_is_a_clear_error():
    with pytest.raises(TypeError, match="item 1 .*bytes"):
        Tokenizer.train_from_iterator(iter(["fine text", b"bytes are not text"]), 300)
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train_from_iterator("a string, not an iterator of strings", 300)


def test_training_is_deterministic(tiny_corpus, tiny_tokenizer):
    again = Tokenizer.train_from_iterator(tiny_corpus, TINY_VOCAB_SIZE)
    assert again.get_mergeable_ranks() == tiny_tokenizer.get_mergeable_ranks()


# -----------------------------------------------------------------------------
# encode / decode

def test_encode_matches_tiktoken(tiny_tokenizer, overlap_tokenizer):
    for tok in (tiny_tokenizer, overlap_tokenizer):
        ref = tiktoken_reference(tok)
        texts = random_texts(seed=1, n=300)
        assert [tok.encode(t) for t in texts] == [ref.encode_ordinary(t) for t in texts]


def test_encode_batch_and_threads_equal_single(tiny_tokenizer):
    tok = tiny_tokenizer
    texts = random_texts(seed=2, n=100)
    single = [tok.encode(t) for t in texts]
    assert tok.encode(texts) == single
    assert tok.encode(texts, num_threads=1) == single
    assert tok.encode(tuple(texts), num_threads=2) == single
    assert tok.encode(texts[:5], num_threads=8) == single[:5]
    assert tok.encode([]) == [] and tok.encode([], num_threads=3) == []
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode(texts, num_threads=0)
    with pytest.raises(TypeError, match="item 1"):
        tok.encode(["ok", 3])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


def test_prepend_append(tiny_tokenizer):
    tok = tiny_tokenizer
    bos, end = tok.get_bos_token_id(), tok.encode_special("<|assistant_end|>")
    plain = tok.encode("hello there")
    assert tok.encode("hello there", prepend="<|bos|>") == [bos] + plain
    assert tok.encode("hello there", prepend=bos, append="<|assistant_end|>") == [bos] + plain + [end]
    rows = tok.encode(["a b", "c"], prepend="<|bos|>", append=end)
    assert rows == [[bos] + tok.encode("a b") + [end], [bos] + tok.encode("c") + [end]]
    assert rows[0] is not rows[1]
    with pytest.raises(ValueError, match="special token"):
        tok.encode("x", prepend="<|nope|>")
    with pytest.raises(ValueError, match="prepend"):
        tok.encode("x", prepend=10 ** 9)


def test_plain_text_never_gives_special_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    first_special = tok.get_bos_token_id()
    texts = ["".join(SPECIAL_TOKENS), "<|bos|>", " <|bos|> hello <|assistant_end|>\n"] + random_texts(seed=3, n=50)
    for ids in tok.encode(texts) + [tok.encode(t) for t in texts]:
        assert all(i < first_special for i in ids)
    assert tok.decode(tok.encode("<|bos|>")) == "<|bos|>"
    assert tok.encode("<|bos|>") == tiktoken_reference(tok).encode_ordinary("<|bos|>")


def test_decode(tiny_tokenizer):
    tok = tiny_tokenizer
    for text in random_texts(seed=4, n=100):
        assert tok.decode(tok.encode(text)) == text
    ids = [tok.get_bos_token_id()] + tok.encode("hi") + [tok.encode_special("<|user_end|>")]
    assert tok.decode(ids) == "<|bos|>hi<|user_end|>"
    assert tok.decode(torch.tensor(ids)) == "<|bos|>hi<|user_end|>"
    assert tok.decode([np.int64(i) for i in ids]) == "<|bos|>hi<|user_end|>"
    assert tok.id_to_token(tok.encode_special("<|python_start|>")) == "<|python_start|>"
    for bad in ([tok.get_vocab_size()], [-1], ["a"], [1.0], [True]):
        with pytest.raises(ValueError, match="not a token id"):
            tok.decode(bad)


def test_unknown_special_name(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"unknown special token '<\|eos\|>'"):
        tiny_tokenizer.encode_special("<|eos|>")


# -----------------------------------------------------------------------------
# token bytes

def test_token_bytes_from_raw_bytes(tiny_tokenizer):
    tok = tiny_tokenizer
    tb = tok.token_bytes()
    assert tb.dtype == torch.int32 and tb.shape == (tok.get_vocab_size(),)
    n = tok.get_vocab_size() - len(SPECIAL_TOKENS)
    assert tb[n:].tolist() == [0] * len(SPECIAL_TOKENS)
    # a merged token that is only a piece of a multi-byte character: not valid UTF-8 on its own
    id_to_bytes = sorted(tok.get_mergeable_ranks(), key=tok.get_mergeable_ranks().get)
    partial = [i for i in range(256, n) if not _is_utf8(id_to_bytes[i])]
    assert partial, "the tiny corpus should give at least one merged token that splits a character"
    for i in partial + [id_to_bytes.index(b) for b in (b"\xe6", b"\x80")]:
        raw = id_to_bytes[i]
        assert tb[i].item() == len(raw)
        assert len(tok.decode([i]).encode("utf-8")) != len(raw)  # what a str round trip would count
    for text in random_texts(seed=5, n=100):
        ids = tok.encode(text)
        assert tb[ids].sum().item() == len(text.encode("utf-8"))


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# -----------------------------------------------------------------------------
# save / load

def test_save_load_round_trip(tiny_tokenizer, tiny_tokenizer_dir):
    loaded = Tokenizer.from_directory(tiny_tokenizer_dir)
    assert loaded.get_vocab_size() == tiny_tokenizer.get_vocab_size()
    assert loaded.get_pattern() == tiny_tokenizer.get_pattern()
    texts = random_texts(seed=6, n=100)
    assert loaded.encode(texts) == tiny_tokenizer.encode(texts)
    assert [loaded.encode_special(s) for s in SPECIAL_TOKENS] == [tiny_tokenizer.encode_special(s) for s in SPECIAL_TOKENS]
    saved_tb = torch.load(os.path.join(tiny_tokenizer_dir, "token_bytes.pt"), weights_only=True)
    assert torch.equal(saved_tb, tiny_tokenizer.token_bytes())
    assert not [f for f in os.listdir(tiny_tokenizer_dir) if ".tmp" in f]
    # the ranks file is tiktoken's format: tiktoken's own loader reads it
    from tiktoken.load import load_tiktoken_bpe
    ranks = load_tiktoken_bpe(os.path.join(tiny_tokenizer_dir, "tokenizer.bpe"))
    assert ranks == tiny_tokenizer.get_mergeable_ranks()


def test_pickle_round_trip(tiny_tokenizer):
    clone = pickle.loads(pickle.dumps(tiny_tokenizer))
    texts = random_texts(seed=7, n=20)
    assert clone.encode(texts) == tiny_tokenizer.encode(texts)


def test_missing_or_corrupt_directory(tiny_tokenizer, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=r"nope.*does not exist.*scripts\.tok_train"):
        Tokenizer.from_directory(str(missing))

    d = tmp_path / "tok"
    tiny_tokenizer.save(str(d))
    os.remove(d / "tokenizer.meta")
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.meta.*missing.*scripts\.tok_train"):
        Tokenizer.from_directory(str(d))

    tiny_tokenizer.save(str(d))
    lines = (d / "tokenizer.bpe").read_text().splitlines()
    (d / "tokenizer.bpe").write_text("\n".join(lines[:300] + ["@@not-base64@@ 300"] + lines[301:]) + "\n")
    with pytest.raises(ValueError, match=r"tokenizer\.bpe.*line 301"):
        Tokenizer.from_directory(str(d))

    tiny_tokenizer.save(str(d))
    (d / "tokenizer.bpe").write_text("\n".join(lines[:-5]) + "\n")  # a truncated ranks file
    with pytest.raises(ValueError, match="different saves"):
        Tokenizer.from_directory(str(d))

    (d / "tokenizer.bpe").write_text("\n".join(lines) + "\n\n")  # a trailing blank line is fine
    assert Tokenizer.from_directory(str(d)).get_mergeable_ranks() == tiny_tokenizer.get_mergeable_ranks()

    tiny_tokenizer.save(str(d))
    (d / "tokenizer.meta").write_text("{ not json")
    with pytest.raises(ValueError, match=r"tokenizer\.meta.*not valid JSON"):
        Tokenizer.from_directory(str(d))

    tiny_tokenizer.save(str(d))
    token = base64.b64encode(bytes([65])).decode()
    (d / "tokenizer.bpe").write_text("\n".join(lines[:66] + [f"{token} 66"] + lines[67:]) + "\n")  # 'A' twice
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.from_directory(str(d))


def test_get_tokenizer_from_base_dir(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tok_train"):
        get_tokenizer()
    with pytest.raises(FileNotFoundError, match=r"token_bytes\.pt.*tok_train"):
        get_token_bytes()
    tiny_tokenizer.save(str(tmp_path / "tokenizer"))
    assert get_tokenizer().encode("hello world") == tiny_tokenizer.encode("hello world")
    assert torch.equal(get_token_bytes("cpu"), tiny_tokenizer.token_bytes())


# -----------------------------------------------------------------------------
# conversations

def _specials(tok):
    return {name.strip("<|>"): tok.encode_special(name) for name in SPECIAL_TOKENS}


def test_render_plain_turns(tiny_tokenizer):
    tok, s = tiny_tokenizer, _specials(tiny_tokenizer)
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6, of course."},
    ]
    ids, mask = tok.render_conversation({"messages": messages})
    u1, a1, u2, a2 = (tok.encode(m["content"]) for m in messages)
    expected = [
        ([s["bos"]], 0),
        ([s["user_start"]] + u1 + [s["user_end"]], 0),
        ([s["assistant_start"]], 0), (a1, 1), ([s["assistant_end"]], 1),
        ([s["user_start"]] + u2 + [s["user_end"]], 0),
        ([s["assistant_start"]], 0), (a2, 1), ([s["assistant_end"]], 1),
    ]
    assert ids == [i for chunk, _ in expected for i in chunk]
    assert mask == [m for chunk, m in expected for _ in chunk]
    # the bare list form renders the same
    assert tok.render_conversation(messages) == (ids, mask)
    assert tok.decode(ids).startswith("<|bos|><|user_start|>What is 2+2?<|user_end|><|assistant_start|>4.")


def test_render_system_message_is_merged(tiny_tokenizer):
    tok = tiny_tokenizer
    with_system = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    merged = [{"role": "user", "content": "Be brief.\n\nHi"}, {"role": "assistant", "content": "Hello."}]
    assert tok.render_conversation(with_system) == tok.render_conversation(merged)


def test_render_tool_calls_and_outputs(tiny_tokenizer):
    tok, s = tiny_tokenizer, _specials(tiny_tokenizer)
    parts = [
        {"type": "text", "text": "Let me compute. "},
        {"type": "python", "text": "1234 * 5678"},
        {"type": "python_output", "text": "7006652"},
        {"type": "text", "text": "It is 7006652."},
    ]
    conversation = {"messages": [{"role": "user", "content": "1234*5678?"}, {"role": "assistant", "content": parts}]}
    ids, mask = tok.render_conversation(conversation)
    expected = [
        ([s["bos"], s["user_start"]] + tok.encode("1234*5678?") + [s["user_end"], s["assistant_start"]], 0),
        (tok.encode("Let me compute. "), 1),
        ([s["python_start"]] + tok.encode("1234 * 5678") + [s["python_end"]], 1),
        ([s["output_start"]] + tok.encode("7006652") + [s["output_end"]], 0),
        (tok.encode("It is 7006652."), 1),
        ([s["assistant_end"]], 1),
    ]
    assert ids == [i for chunk, _ in expected for i in chunk]
    assert mask == [m for chunk, m in expected for _ in chunk]
    with pytest.raises(ValueError, match="part 0.*'image'"):
        tok.render_conversation([{"role": "user", "content": "x"},
                                 {"role": "assistant", "content": [{"type": "image", "text": "x"}]}])


def test_render_truncates(tiny_tokenizer):
    tok = tiny_tokenizer
    conversation = [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "reply " * 50}]
    full_ids, full_mask = tok.render_conversation(conversation, max_tokens=None)
    assert len(full_ids) > 40
    for max_tokens in (1, 17, 40, len(full_ids), len(full_ids) + 5):
        ids, mask = tok.render_conversation(conversation, max_tokens=max_tokens)
        assert ids == full_ids[:max_tokens] and mask == full_mask[:max_tokens]
    with pytest.raises(ValueError, match="max_tokens"):
        tok.render_conversation(conversation, max_tokens=0)


def test_render_for_completion(tiny_tokenizer):
    tok = tiny_tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "the reply to generate"},
    ]
    original = [dict(m) for m in messages]
    prompt = tok.render_for_completion({"messages": messages})
    prefix, _ = tok.render_conversation(messages[:-1])
    assert prompt == prefix + [tok.encode_special("<|assistant_start|>")]
    assert messages == original  # the caller's conversation is untouched
    with pytest.raises(ValueError, match="last message must be the assistant"):
        tok.render_for_completion(messages[:-1])


def test_render_for_reply(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What is 2+2?"}]
    ids = tok.render_for_reply(msgs)
    assert ids == tok.render_for_completion(msgs + [{"role": "assistant", "content": ""}])
    assert ids[-1] == tok.encode_special("<|assistant_start|>")
    assert tok.render_for_reply({"messages": msgs}) == ids
    with pytest.raises(ValueError, match="last message must be the user"):
        tok.render_for_reply(msgs[:3])
    with pytest.raises(ValueError, match="role"):
        tok.render_for_reply([{"role": "robot", "content": "x"}, {"role": "user", "content": "y"}])
    with pytest.raises(ValueError):
        tok.render_for_reply([])
    with pytest.raises(ValueError):  # alternation is the tokenizer's check
        tok.render_for_reply([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


@pytest.mark.parametrize("messages, match", [
    ([{"role": "assistant", "content": "hi"}], "message 0 .*'assistant', expected 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "message 1 .*expected 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first may be 'system'"),
    ([{"role": "system", "content": "a"}], "system message must be followed by a user"),
    ([{"role": "user", "content": ["a"]}], "user content must be a str"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([], "non-empty"),
    ({"no_messages": []}, "non-empty"),
])
def test_render_bad_conversations(tiny_tokenizer, messages, match):
    with pytest.raises(ValueError, match=match):
        tiny_tokenizer.render_conversation(messages)


# -----------------------------------------------------------------------------
# Hugging Face export

def _export(tok, tmp_path):
    path = tok.export_hf(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "tokenizer.json")
    return tokenizers.Tokenizer.from_file(path)


def test_hf_export_equals_ours(tiny_tokenizer, overlap_tokenizer, tmp_path):
    for k, tok in enumerate((tiny_tokenizer, overlap_tokenizer)):
        hf = _export(tok, tmp_path / str(k))
        assert hf.get_vocab_size() == tok.get_vocab_size()
        texts = random_texts(seed=8 + k, n=1000)  # "<|bos|>" and the like included: text in both
        ours = tok.encode(texts)
        theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        mismatches = [(t, a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
        assert not mismatches, f"{len(mismatches)} texts differ, first: {mismatches[0]}"
        for ids in ours:
            assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids)


def test_hf_export_keeps_special_strings_as_text(tiny_tokenizer, tmp_path):
    # the export once matched "<|bos|>" in text as the special token; our encode() keeps it text, and
    # so must the export (no injection of chat control tokens); add_special_tokens puts bos first
    hf = _export(tiny_tokenizer, tmp_path)
    texts = ["".join(SPECIAL_TOKENS)] + random_texts(seed=10, n=300)
    ours = tiny_tokenizer.encode(texts)
    assert [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)] == ours
    assert [e.ids for e in hf.encode_batch(texts)] == [[tiny_tokenizer.get_bos_token_id()] + ids for ids in ours]


def test_hf_export_tie_breaking_stress(overlap_tokenizer, tmp_path):
    # words over the training alphabet hit overlapping tokens and equal-rank ties at every step
    tok = overlap_tokenizer
    hf = _export(tok, tmp_path)
    rng = random.Random(11)
    texts = ["".join(rng.choice("aab ") for _ in range(rng.randrange(1, 80))) for _ in range(3000)]
    theirs = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert tok.encode(texts) == theirs


def test_hf_export_special_tokens(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    hf = _export(tok, tmp_path)
    ref = tiktoken_reference(tok)
    hf_names = dict(zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS))
    for name in SPECIAL_TOKENS:
        assert hf.token_to_id(hf_names[name]) == tok.encode_special(name) and hf.token_to_id(name) is None
    rng = random.Random(12)
    for _ in range(200):
        # the export's spelling of a special token, between pieces of text, is that token (meant as
        # one); the text pieces get tiktoken's ids, our spelling of a special token among them included
        pieces = [(random_unicode(rng, 10), rng.choice(SPECIAL_TOKENS)) for _ in range(rng.randrange(1, 4))]
        text = "".join(t + hf_names[name] for t, name in pieces)
        expected = [i for t, name in pieces for i in ref.encode_ordinary(t) + [tok.encode_special(name)]]
        assert hf.encode(text, add_special_tokens=False).ids == expected
    ids, _ = tok.render_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    decoded = tok.decode(ids)
    for name in SPECIAL_TOKENS:
        decoded = decoded.replace(name, hf_names[name])
    assert hf.decode(ids, skip_special_tokens=False) == decoded
    assert hf.decode(ids, skip_special_tokens=True) == "hiyo"


def test_hf_export_to_json_path(tiny_tokenizer, tmp_path):
    path = tiny_tokenizer.export_hf(str(tmp_path / "sub" / "my_tokenizer.json"))
    hf = tokenizers.Tokenizer.from_file(path)
    assert hf.encode("Hello, world!", add_special_tokens=False).ids == tiny_tokenizer.encode("Hello, world!")
