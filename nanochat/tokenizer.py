"""
The chat tokenizer: byte-level BPE (trained and run by the Rust extension `rustbpe`) plus nine
special tokens that frame a conversation, saving/loading, conversation rendering with a training
mask, the token-bytes table for bits-per-byte, and export to a Hugging Face `tokenizer.json`.

Ids: 0..255 are the raw bytes, 256..n-1 the merged tokens (id == merge rank), and the special
tokens take the last ids n..n+8, in the order of SPECIAL_TOKENS. Ordinary text is encoded by the
BPE alone, so no text (not even the literal string "<|bos|>") can ever produce a special id;
special ids enter a sequence only through `encode_special`, prepend/append or the renderers.

A saved tokenizer is a directory:
    tokenizer.bpe    one merged token per line: base64 of its bytes, a space, its rank (tiktoken's
                     format, so `tiktoken.load.load_tiktoken_bpe` reads it too)
    tokenizer.meta   JSON: format, split pattern, special tokens and their ids, vocab size
    token_bytes.pt   torch int32 (vocab_size,): UTF-8 byte length of every token, 0 for specials
Each file is written to a temporary name and renamed, so a crash never leaves a torn file.

Usage:
    tok = Tokenizer.train_from_iterator(texts, vocab_size=32768); tok.save(dir)
    tok = get_tokenizer()                 # from get_base_dir()/tokenizer (made by scripts.tok_train)
    ids, mask = tok.render_conversation({"messages": [...]})
Tests: uv run pytest tests/test_tokenizer.py
"""

import base64
import json
import logging
import operator
import os
from concurrent.futures import ThreadPoolExecutor

import torch

import rustbpe

from nanochat.common import atomic_write, get_base_dir

logger = logging.getLogger("nanochat")

SPECIAL_TOKENS = [
    "<|bos|>",  # starts every document and every conversation
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",  # the assistant calls the python tool ...
    "<|python_end|>",
    "<|output_start|>",  # ... and the engine writes the tool's output back
    "<|output_end|>",
]
# the same tokens as spelled in a Hugging Face export (Tokenizer.export_hf): fullwidth bars (U+FF5C),
# so that the text "<|bos|>" stays text there as it does here
HF_SPECIAL_TOKENS = [name.replace("|", "\uff5c") for name in SPECIAL_TOKENS]

RANKS_FILE = "tokenizer.bpe"
META_FILE = "tokenizer.meta"
TOKEN_BYTES_FILE = "token_bytes.pt"
FORMAT_NAME = "nanochat-bpe"
FORMAT_VERSION = 1
TRAIN_HINT = "train one with `python -m scripts.tok_train` (it saves to $NANOCHAT_BASE_DIR/tokenizer)"


class Tokenizer:
    """Byte-level BPE with the chat special tokens. Build with train_from_iterator or from_directory."""

    def __init__(self, mergeable, pattern):
        """mergeable: list of bytes, the token of rank i at index i (the 256 single bytes included)."""
        self._mergeable = list(mergeable)
        self._pattern = pattern
        self._check_ranks(self._mergeable, where="the given ranks")
        self._bpe = rustbpe.Tokenizer.from_ranks([(b, i) for i, b in enumerate(self._mergeable)], pattern)
        n = len(self._mergeable)
        self._special_ids = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        # id -> bytes for decoding; a special token decodes to its own name
        self._id_bytes = self._mergeable + [name.encode("utf-8") for name in SPECIAL_TOKENS]

    @staticmethod
    def _check_ranks(mergeable, where):
        if len(set(mergeable)) != len(mergeable):
            raise ValueError(f"{where}: a token appears twice; {TRAIN_HINT}")
        missing = {bytes([b]) for b in range(256)} - set(mergeable)
        if missing:
            raise ValueError(f"{where}: {len(missing)} of the 256 single-byte tokens are missing; {TRAIN_HINT}")
        if any(len(b) == 0 for b in mergeable):
            raise ValueError(f"{where}: contains an empty token; {TRAIN_HINT}")

    # -------------------------------------------------------------------------
    # training, saving, loading

    @classmethod
    def train_from_iterator(cls, text_iterator, vocab_size, pattern=None):
        """Train BPE on an iterator of strings. vocab_size counts the 256 bytes AND the 9 special tokens.

        pattern: the split regex (None: rustbpe.GPT4_PATTERN). If the text runs out of pairs to merge
        the vocabulary comes out smaller (logged as a warning); the special tokens still follow it.
        """
        min_size = 256 + len(SPECIAL_TOKENS)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
        if vocab_size < min_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must hold the 256 byte tokens and the "
                f"{len(SPECIAL_TOKENS)} special tokens, so at least {min_size}"
            )
        if isinstance(text_iterator, (str, bytes)):
            raise TypeError("text_iterator must yield strings (e.g. [text]), not be a single str/bytes")
        num_merged = vocab_size - len(SPECIAL_TOKENS)
        bpe = rustbpe.Tokenizer()
        # rustbpe raises a TypeError naming the item for anything in the iterator that is not a str
        bpe.train_from_iterator(text_iterator, num_merged, pattern=pattern)
        ranks = sorted(bpe.get_mergeable_ranks(), key=lambda pair: pair[1])
        assert [r for _, r in ranks] == list(range(len(ranks))), "rustbpe ranks must be 0..n-1"
        if len(ranks) < num_merged:
            # the corpus ran out of pairs to merge: a smaller vocab, and the special ids move down with it
            logger.warning(
                f"BPE stopped at {len(ranks)} tokens (asked for {num_merged}): the training text is too "
                f"small; vocab size is {len(ranks) + len(SPECIAL_TOKENS)} instead of {vocab_size}"
            )
        return cls([b for b, _ in ranks], bpe.get_pattern())

    def save(self, tokenizer_dir):
        """Write the ranks, the metadata and token_bytes.pt into tokenizer_dir (created if needed)."""
        os.makedirs(tokenizer_dir, exist_ok=True)

        def write_ranks(f):
            for rank, token in enumerate(self._mergeable):
                f.write(f"{base64.b64encode(token).decode('ascii')} {rank}\n")

        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pattern": self._pattern,
            "num_merged_tokens": len(self._mergeable),
            "special_tokens": self._special_ids,
            "vocab_size": self.get_vocab_size(),
        }
        atomic_write(os.path.join(tokenizer_dir, RANKS_FILE), write_ranks)
        atomic_write(os.path.join(tokenizer_dir, TOKEN_BYTES_FILE), lambda f: torch.save(self.token_bytes(), f), "wb")
        # the metadata goes last: a directory with it is a directory whose other files are complete
        atomic_write(os.path.join(tokenizer_dir, META_FILE), lambda f: json.dump(meta, f, indent=2))

    @classmethod
    def from_directory(cls, tokenizer_dir):
        """Load a tokenizer saved by save(); errors name the path, what is wrong and how to fix it."""
        tokenizer_dir = os.fspath(tokenizer_dir)
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"tokenizer directory {tokenizer_dir!r} does not exist; {TRAIN_HINT}")
        meta_path = os.path.join(tokenizer_dir, META_FILE)
        ranks_path = os.path.join(tokenizer_dir, RANKS_FILE)
        for path in (meta_path, ranks_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"tokenizer file {path!r} is missing (an incomplete save?); {TRAIN_HINT}")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"tokenizer file {meta_path!r} is not valid JSON ({e}); {TRAIN_HINT}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME or meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{meta_path!r} is not a {FORMAT_NAME} v{FORMAT_VERSION} tokenizer file; {TRAIN_HINT}")
        for key, kind in (("pattern", str), ("num_merged_tokens", int), ("special_tokens", dict), ("vocab_size", int)):
            if not isinstance(meta.get(key), kind):
                raise ValueError(f"{meta_path!r}: field {key!r} is missing or not a {kind.__name__}; {TRAIN_HINT}")

        mergeable = []
        with open(ranks_path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue  # tolerate blank lines (e.g. a trailing one)
                try:
                    if len(fields) != 2:
                        raise ValueError
                    token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
                except ValueError:
                    raise ValueError(
                        f"{ranks_path!r} line {lineno}: expected '<base64 bytes> <rank>', got {line[:80]!r}; {TRAIN_HINT}"
                    ) from None
                if rank != len(mergeable):
                    raise ValueError(f"{ranks_path!r} line {lineno}: rank {rank}, expected {len(mergeable)}; {TRAIN_HINT}")
                mergeable.append(token)
        cls._check_ranks(mergeable, where=repr(ranks_path))

        n = len(mergeable)
        expected_specials = {name: n + i for i, name in enumerate(SPECIAL_TOKENS)}
        if meta["num_merged_tokens"] != n or meta["vocab_size"] != n + len(SPECIAL_TOKENS):
            raise ValueError(
                f"{meta_path!r} says {meta['num_merged_tokens']} merged tokens / vocab {meta['vocab_size']}, but "
                f"{ranks_path!r} holds {n} tokens: the files come from different saves; {TRAIN_HINT}"
            )
        if meta["special_tokens"] != expected_specials:
            raise ValueError(
                f"{meta_path!r}: special tokens {meta['special_tokens']} differ from this code's {expected_specials}; {TRAIN_HINT}"
            )
        return cls(mergeable, meta["pattern"])

    def __getstate__(self):
        # the Rust object does not pickle; rebuild it from the ranks (e.g. in DataLoader workers)
        return {"mergeable": self._mergeable, "pattern": self._pattern}

    def __setstate__(self, state):
        self.__init__(state["mergeable"], state["pattern"])

    # -------------------------------------------------------------------------
    # vocabulary

    def get_vocab_size(self):
        return len(self._id_bytes)

    def get_pattern(self):
        return self._pattern

    def get_mergeable_ranks(self):
        """{token bytes: rank} for the non-special tokens, as tiktoken.Encoding's mergeable_ranks wants."""
        return {token: rank for rank, token in enumerate(self._mergeable)}

    def get_special_tokens(self):
        return list(SPECIAL_TOKENS)

    def get_bos_token_id(self):
        return self._special_ids["<|bos|>"]

    def encode_special(self, name):
        """The id of a special token, by name (e.g. "<|assistant_end|>")."""
        if name not in self._special_ids:
            raise ValueError(f"unknown special token {name!r}; the special tokens are {SPECIAL_TOKENS}")
        return self._special_ids[name]

    def id_to_token(self, token_id):
        """A single token as text (invalid UTF-8 pieces show as U+FFFD)."""
        return self.decode([token_id])

    def token_bytes(self):
        """torch.int32 (vocab_size,): bytes of UTF-8 text each token stands for; 0 for special tokens.

        Counted on the raw token bytes: a token that is a fragment of a multi-byte character is not
        valid UTF-8 alone, and round-tripping it through str would count the 3-byte U+FFFD instead.
        """
        lengths = [len(token) for token in self._mergeable] + [0] * len(SPECIAL_TOKENS)
        return torch.tensor(lengths, dtype=torch.int32)

    # -------------------------------------------------------------------------
    # encoding and decoding

    def _as_token_id(self, token, what):
        """prepend/append: a special token name or a token id."""
        if isinstance(token, str):
            return self.encode_special(token)
        if isinstance(token, int) and not isinstance(token, bool) and 0 <= token < self.get_vocab_size():
            return token
        raise ValueError(f"{what}={token!r} is neither a special token name nor an id in [0, {self.get_vocab_size()})")

    def encode(self, text, prepend=None, append=None, num_threads=None):
        """Encode a str -> list[int], or a list of str -> list[list[int]] (in parallel, in Rust).

        prepend/append: a special token name ("<|bos|>") or id added to every sequence.
        num_threads: None uses rustbpe's parallel encode_batch (rayon: one thread per core, or
        $RAYON_NUM_THREADS); k >= 1 uses exactly k threads (1: this thread alone).
        """
        pre = None if prepend is None else self._as_token_id(prepend, "prepend")
        post = None if append is None else self._as_token_id(append, "append")

        def frame(ids):
            if pre is not None:
                ids.insert(0, pre)
            if post is not None:
                ids.append(post)
            return ids

        if isinstance(text, str):
            return frame(self._bpe.encode(text))
        if isinstance(text, (list, tuple)):
            for i, t in enumerate(text):
                if not isinstance(t, str):
                    raise TypeError(f"encode: item {i} of the list is a {type(t).__name__}, expected str")
            if num_threads is not None and num_threads < 1:
                raise ValueError(f"num_threads={num_threads} must be >= 1 (or None for all cores)")
            if num_threads is None:
                rows = self._bpe.encode_batch(list(text))
            elif num_threads == 1:
                rows = [self._bpe.encode(t) for t in text]
            else:
                # rustbpe.encode releases the GIL, so num_threads Python threads run it in parallel;
                # a few chunks per thread balance long and short texts
                size = max(1, -(-len(text) // (4 * num_threads)))
                chunks = [text[i:i + size] for i in range(0, len(text), size)]
                with ThreadPoolExecutor(num_threads) as pool:
                    rows = [row for chunk in pool.map(lambda c: [self._bpe.encode(t) for t in c], chunks) for row in chunk]
            return [frame(list(row)) for row in rows]
        raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")

    def __call__(self, *args, **kwargs):
        return self.encode(*args, **kwargs)

    def decode(self, ids):
        """ids (list of ints, or a 1-D tensor/array) -> str. Special tokens decode to their names."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        vocab_size = self.get_vocab_size()
        pieces = []
        for i in ids:
            try:
                k = operator.index(i)  # ints, numpy ints; not floats, strings or bools
            except TypeError:
                k = -1
            if isinstance(i, bool) or not 0 <= k < vocab_size:
                raise ValueError(f"decode: {i!r} is not a token id in [0, {vocab_size})")
            pieces.append(self._id_bytes[k])
        return b"".join(pieces).decode("utf-8", errors="replace")

    # -------------------------------------------------------------------------
    # conversations

    def _validated_messages(self, conversation):
        """conversation: {"messages": [...]} or a list of {"role", "content"} messages.

        Returns the messages with a leading system message folded into the first user message,
        checked to alternate user, assistant, user, ... (starting with user).
        """
        messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("a conversation is {'messages': [...]} or a non-empty list of {'role', 'content'} messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.100}")
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"message {i} has role {m['role']!r}; a role is 'system', 'user' or 'assistant'")
        messages = list(messages)
        if messages[0]["role"] == "system":
            if len(messages) < 2 or messages[1]["role"] != "user":
                raise ValueError("a system message must be followed by a user message (it is merged into it)")
            system, user = messages[0]["content"], messages[1]["content"]
            if not isinstance(system, str) or not isinstance(user, str):
                raise ValueError("the system message and the first user message must have str content")
            messages = [{"role": "user", "content": system + "\n\n" + user}] + messages[2:]
        for i, m in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if m["role"] != expected:
                raise ValueError(
                    f"message {i} (after merging a system message) has role {m['role']!r}, expected {expected!r}: "
                    f"roles must alternate user, assistant, user, ... and only the first may be 'system'"
                )
        return messages

    def render_conversation(self, conversation, max_tokens=2048):
        """Tokenize a conversation for training -> (ids, mask), two lists of equal length.

        mask is 1 on the tokens the assistant must learn to produce (its text, its python tool calls
        with their <|python_start|>/<|python_end|>, and its <|assistant_end|>), 0 on everything else:
        <|bos|>, user turns, <|assistant_start|> (the engine writes it), and tool outputs with their
        <|output_start|>/<|output_end|> (the engine writes those too). An assistant message's content
        is a str or a list of parts {"type": "text" | "python" | "python_output", "text": str}.
        Both lists are cut to max_tokens (None: no cut).
        """
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ValueError(f"max_tokens={max_tokens!r} must be a positive int or None")
        messages = self._validated_messages(conversation)
        ids, mask = [], []

        def add(token_ids, m):
            ids.extend(token_ids)
            mask.extend([m] * len(token_ids))

        special = self._special_ids
        add([special["<|bos|>"]], 0)
        for i, message in enumerate(messages):
            content = message["content"]
            if message["role"] == "user":
                if not isinstance(content, str):
                    raise ValueError(f"message {i}: user content must be a str, got {type(content).__name__}")
                add([special["<|user_start|>"]] + self.encode(content) + [special["<|user_end|>"]], 0)
                continue
            add([special["<|assistant_start|>"]], 0)
            if isinstance(content, str):
                add(self.encode(content), 1)
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    kind = part.get("type") if isinstance(part, dict) else None
                    text = part.get("text") if isinstance(part, dict) else None
                    if not isinstance(text, str):
                        raise ValueError(f"message {i} part {j}: needs a str 'text', got {part!r:.100}")
                    if kind == "text":
                        add(self.encode(text), 1)
                    elif kind == "python":
                        add([special["<|python_start|>"]] + self.encode(text) + [special["<|python_end|>"]], 1)
                    elif kind == "python_output":
                        add([special["<|output_start|>"]] + self.encode(text) + [special["<|output_end|>"]], 0)
                    else:
                        raise ValueError(
                            f"message {i} part {j}: type {kind!r} is not one of 'text', 'python', 'python_output'"
                        )
            else:
                raise ValueError(f"message {i}: assistant content must be a str or a list of parts, got {type(content).__name__}")
            add([special["<|assistant_end|>"]], 1)

        if max_tokens is not None:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        return ids, mask

    def render_for_reply(self, conversation):
        """The prompt for the assistant's reply to a conversation that ends on a user turn (what a chat
        request is): the conversation rendered, followed by <|assistant_start|>. Nothing is truncated."""
        messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
        if not isinstance(messages, (list, tuple)) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "user":
            raise ValueError("render_for_reply: the last message must be the user's (the turn to answer)")
        ids, _ = self.render_conversation(list(messages), max_tokens=None)
        return ids + [self._special_ids["<|assistant_start|>"]]

    def render_for_completion(self, conversation):
        """The prompt for generating the last (assistant) reply of a task's conversation: the
        conversation without that reply, as render_for_reply renders it. The input is not modified."""
        messages = conversation.get("messages") if isinstance(conversation, dict) else conversation
        if not isinstance(messages, (list, tuple)) or not messages or not isinstance(messages[-1], dict) \
                or messages[-1].get("role") != "assistant":
            raise ValueError("render_for_completion: the last message must be the assistant's (the reply to generate)")
        return self.render_for_reply(messages[:-1])

    # -------------------------------------------------------------------------
    # Hugging Face export

    def export_hf(self, path):
        """Write a Hugging Face tokenizer.json that gives exactly our ids on any text.

        path: a file name ending in .json, or a directory (tokenizer.json is written inside).
        How the HF BPE model is made to follow tiktoken's rule (merge the adjacent pair whose
        concatenation has the lowest rank, leftmost first; a piece that is a token is emitted whole):
        - ignore_merges=True: a pre-token found in the vocab is emitted whole, as in tiktoken;
        - merges: for every merged token, every split of it into two tokens, listed in the order of
          the token's rank, so HF's "lowest merge index, then leftmost" picks the pair of lowest
          result rank. Two splits of the same token never sit in one word at the same time (a span
          of bytes merged in place evolves as if alone, so it passes through one 2-symbol state
          only), hence their order among themselves never decides anything and ties between equal
          ranks are broken leftmost, as in tiktoken.
        Special tokens. HF matches an added token's string wherever it occurs in the input, but our
        encode() keeps the text "<|bos|>" as text. So in the export the special tokens are spelled
        with fullwidth bars, "<\uff5cbos\uff5c>" (HF_SPECIAL_TOKENS; DeepSeek's tokenizers use the same
        device): our spellings in any text stay text, with our ids, and no typed prompt injects a
        chat control token. The special tokens are meant through their ids, the chat template (which
        writes the fullwidth spellings, nanochat/hf.py) or add_special_tokens=True (a post-processor
        puts <|bos|> first, as every document and conversation starts). Not covered: text that
        itself contains a fullwidth spelling encodes it as the special token (the chat template
        refuses such content).
        """
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
        from tokenizers import Tokenizer as HFTokenizer

        path = os.fspath(path)
        if not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "tokenizer.json")
        byte_char = _bytes_to_unicode()
        as_str = [("".join(byte_char[b] for b in token)) for token in self._mergeable]
        vocab = {s: i for i, s in enumerate(as_str)}
        merges = []
        for token, s in zip(self._mergeable, as_str):
            for k in range(1, len(token)):
                left, right = s[:k], s[k:]
                if left in vocab and right in vocab:
                    merges.append((left, right))
        model = models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False, byte_fallback=False)
        hf = HFTokenizer(model)
        hf.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(self._pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        hf.decoder = decoders.ByteLevel()
        hf.add_special_tokens([AddedToken(name, special=True, normalized=False) for name in HF_SPECIAL_TOKENS])
        for name, hf_name in zip(SPECIAL_TOKENS, HF_SPECIAL_TOKENS):
            assert hf.token_to_id(hf_name) == self._special_ids[name], \
                f"HF gave {hf_name} id {hf.token_to_id(hf_name)}, expected {self._special_ids[name]}"
        bos = (HF_SPECIAL_TOKENS[0], self.get_bos_token_id())
        hf.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1",
                                                          special_tokens=[bos])
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        atomic_write(path, lambda f: f.write(hf.to_str()))
        return path


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table used by HF's ByteLevel pre-tokenizer.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order, to U+0100...
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# -----------------------------------------------------------------------------
# the project's tokenizer, as saved by scripts/tok_train.py

def get_tokenizer():
    """The tokenizer saved in get_base_dir()/tokenizer."""
    return Tokenizer.from_directory(os.path.join(get_base_dir(), "tokenizer"))


def get_token_bytes(device="cpu"):
    """The token-bytes table saved beside the tokenizer: int32 (vocab_size,), for bits-per-byte."""
    path = os.path.join(get_base_dir(), "tokenizer", TOKEN_BYTES_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token-bytes table {path!r} is missing; {TRAIN_HINT}")
    token_bytes = torch.load(path, map_location=device, weights_only=True)
    assert token_bytes.dtype == torch.int32 and token_bytes.dim() == 1, f"{path}: expected a 1-D int32 tensor"
    return token_bytes
