"""
Train the project's BPE tokenizer on the first characters of the pretraining shards and save it,
with its token-bytes table, to get_base_dir()/tokenizer (where every later stage loads it from),
plus tokenizer.json: the same tokenizer for Hugging Face tools (Tokenizer.export_hf).

    python -m scripts.tok_train                                     # 2B chars, vocab 32768 (speedrun)
    python -m scripts.tok_train --max-chars 20000000                # a quick one (~20 MB of text)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.tok_train    # read the offline mirror

One process on the CPU (rustbpe counts chunks on every core); no torchrun. Documents come from the
training shards in order (parquets_iter_batched("train")); each is cropped to --doc-cap characters
so a few huge documents cannot dominate the statistics, and the last one is cropped so that exactly
--max-chars characters are used (fewer if the shards run out first, which the summary says).
"""

import argparse
import os
import sys
import time

import torch

from nanochat.common import get_base_dir
from nanochat.dataset import parquets_iter_batched, split_files
from nanochat.runlog import save_results
from nanochat.tokenizer import SPECIAL_TOKENS, TOKEN_BYTES_FILE, Tokenizer

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte tokens and the special tokens must fit


class DocumentStream:
    """Iterates training documents, each cropped to doc_cap chars, stopping at max_chars in total.

    Keeps counts (docs, chars, UTF-8 bytes) for the summary; iterate once.
    """

    def __init__(self, max_chars, doc_cap, data_dir=None):
        self.max_chars, self.doc_cap, self.data_dir = max_chars, doc_cap, data_dir
        self.docs = self.chars = self.bytes = self.cropped = 0

    def __iter__(self):
        for batch in parquets_iter_batched("train", data_dir=self.data_dir):
            for doc in batch:
                if doc is None:  # a null row in the parquet column: nothing to learn from
                    continue
                keep = min(self.doc_cap, self.max_chars - self.chars)
                if len(doc) > keep:
                    doc = doc[:keep]
                    self.cropped += 1
                self.docs += 1
                self.chars += len(doc)
                self.bytes += len(doc.encode("utf-8"))
                yield doc
                if self.chars >= self.max_chars:
                    return


def main():
    parser = argparse.ArgumentParser(description="Train the BPE tokenizer on the pretraining shards.")
    # data
    parser.add_argument("--max-chars", type=int, default=2_000_000_000,
                        help="characters of training text to use, from the start of the training shards")
    parser.add_argument("--doc-cap", type=int, default=10_000, help="crop every document to this many characters")
    # tokenizer
    parser.add_argument("--vocab-size", type=int, default=32768,
                        help=f"vocabulary size, including the 256 byte tokens and the {len(SPECIAL_TOKENS)} "
                             f"special tokens (at least {MIN_VOCAB_SIZE}; a multiple of 128 suits GPUs)")
    # output
    parser.add_argument("--output-dir", default=None,
                        help="where to save the tokenizer (default: <base dir>/tokenizer, where the other stages look)")
    args = parser.parse_args()

    if args.vocab_size < MIN_VOCAB_SIZE:
        parser.error(f"--vocab-size {args.vocab_size} is too small: it must hold the 256 byte tokens and the "
                     f"{len(SPECIAL_TOKENS)} special tokens, so at least {MIN_VOCAB_SIZE} (e.g. 32768)")
    if args.max_chars < 1:
        parser.error(f"--max-chars {args.max_chars} must be a positive number of characters")
    if args.doc_cap < 1:
        parser.error(f"--doc-cap {args.doc_cap} must be a positive number of characters")
    print(f"args: {vars(args)}")

    # Fail early, with the data module's own advice, when there is nothing to train on.
    try:
        train_files = split_files("train")
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"tok_train: error: {e}")
    print(f"training shards: {len(train_files)} in {os.path.dirname(train_files[0])}")
    output_dir = args.output_dir or os.path.join(get_base_dir(), "tokenizer")

    # ---- train
    stream = DocumentStream(args.max_chars, args.doc_cap)
    t0 = time.time()
    tokenizer = Tokenizer.train_from_iterator(iter(stream), args.vocab_size)
    train_time = time.time() - t0
    if stream.chars == 0:
        sys.exit("tok_train: error: the training shards hold no text; check the data folder above")
    print(f"training time: {train_time:.2f}s for {stream.bytes / 1e6:,.1f} MB of text "
          f"({stream.bytes / 1e6 / train_time:.2f} MB/s, reading the shards included)")

    # ---- save (writes the ranks, the metadata and token_bytes.pt, each atomically)
    tokenizer.save(output_dir)
    hf_path = tokenizer.export_hf(output_dir)  # the same tokenizer for Hugging Face tools (tokenizers, transformers)
    print(f"saved the tokenizer to {output_dir} (and {os.path.basename(hf_path)} for Hugging Face tools)")

    # ---- sanity check: the saved files load and round-trip text, plain text never makes a special id
    loaded = Tokenizer.from_directory(output_dir)
    sample = "Hello world! The year 2025 ends soon. 你好，世界 🌍 <|bos|> x**2 + 3*x - 7 == 0"
    ids = loaded.encode(sample)
    assert loaded.decode(ids) == sample, "the saved tokenizer does not round-trip text"
    assert max(ids) < loaded.get_vocab_size() - len(SPECIAL_TOKENS), "plain text produced a special token id"

    # ---- summary
    token_bytes = torch.load(os.path.join(output_dir, TOKEN_BYTES_FILE), weights_only=True)
    ordinary = token_bytes[token_bytes > 0].float()  # the special tokens count 0 bytes
    if tokenizer.get_vocab_size() != args.vocab_size:
        print(f"warning: vocab size is {tokenizer.get_vocab_size()}, not {args.vocab_size}: "
              f"the training text ran out of pairs to merge; give it more text (--max-chars)")
    if stream.chars < args.max_chars:
        print(f"note: the training shards hold only {stream.chars:,} characters (after --doc-cap), "
              f"fewer than --max-chars {args.max_chars:,}")
    print("summary:")
    print(f"  vocab size          {tokenizer.get_vocab_size():,} "
          f"({tokenizer.get_vocab_size() - len(SPECIAL_TOKENS):,} BPE + {len(SPECIAL_TOKENS)} special)")
    print(f"  documents           {stream.docs:,} ({stream.cropped:,} cropped)")
    print(f"  characters          {stream.chars:,}")
    print(f"  UTF-8 bytes         {stream.bytes:,}")
    print(f"  token bytes         min {int(ordinary.min())}, max {int(ordinary.max())}, "
          f"mean {ordinary.mean():.2f}, std {ordinary.std():.2f} (over the {ordinary.numel():,} non-special tokens)")
    print(f"  special tokens      {int((token_bytes == 0).sum())} with 0 bytes")
    print(f"  sample              {len(sample.encode('utf-8'))} bytes -> {len(ids)} tokens, round-trip ok")
    save_results("tok_train", config=vars(args), metrics=dict(
        vocab_size=tokenizer.get_vocab_size(), documents=stream.docs, characters=stream.chars,
        train_time_s=round(train_time, 2), mean_token_bytes=round(float(ordinary.mean()), 3)))


if __name__ == "__main__":
    main()
