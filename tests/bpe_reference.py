"""Slow, obviously-correct pure-Python references for rustbpe, used by tests/test_rustbpe.py.

- `train(texts, vocab_size, pattern)`: byte-level BPE training that recounts every pair before
  every merge. Same rules as rustbpe (rustbpe/src/train.rs):
    * the text is split with `pattern` (the `regex` module) and each chunk is BPE'd on its own;
    * a pair's count is the sum over chunks of (chunk count) x (positions where it occurs),
      overlaps included ("aaa" holds (a, a) twice);
    * the highest count wins; ties go to the smallest pair (left id, then right id);
    * each chunk is merged left to right, non-overlapping; merge i makes token 256 + i;
    * training stops early when no pair is left.
- `encode(text, ranks, pattern)`: tiktoken's rule per piece — the whole piece if it is a token,
  else repeatedly merge the adjacent parts whose concatenation has the lowest rank (leftmost on
  ties).

Only for small inputs: training is O(merges x text).
"""

from collections import Counter

import regex


def split(text: str, pattern: str) -> list[str]:
    return regex.findall(pattern, text)


def train(texts, vocab_size: int, pattern: str) -> list[tuple[bytes, int]]:
    """Return the mergeable ranks [(token bytes, id)] ordered by id."""
    assert vocab_size >= 256, f"vocab_size must be >= 256, got {vocab_size}"
    chunk_counts = Counter()
    for text in texts:
        chunk_counts.update(split(text, pattern))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    counts = list(chunk_counts.values())
    vocab = [bytes([b]) for b in range(256)]
    while len(vocab) < vocab_size:
        pair_counts = Counter()
        for word, count in zip(words, counts):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += count
        if not pair_counts:
            break
        (a, b), _ = max(pair_counts.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        new_id = len(vocab)
        vocab.append(vocab[a] + vocab[b])
        for i, word in enumerate(words):
            merged, k = [], 0
            while k < len(word):
                if k + 1 < len(word) and word[k] == a and word[k + 1] == b:
                    merged.append(new_id)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            words[i] = merged
    return [(token, i) for i, token in enumerate(vocab)]


def encode_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    if piece in ranks:
        return [ranks[piece]]
    parts = [bytes([b]) for b in piece]
    while True:
        best = None  # (rank, index)
        for k in range(len(parts) - 1):
            rank = ranks.get(parts[k] + parts[k + 1])
            if rank is not None and (best is None or rank < best[0]):
                best = (rank, k)
        if best is None:
            break
        k = best[1]
        parts[k : k + 2] = [parts[k] + parts[k + 1]]
    return [ranks[p] for p in parts]


def encode(text: str, ranks: dict[bytes, int], pattern: str) -> list[int]:
    ids = []
    for piece in split(text, pattern):
        ids.extend(encode_piece(piece.encode("utf-8"), ranks))
    return ids
