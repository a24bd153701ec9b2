"""
Compression of the project's tokenizer: UTF-8 bytes per token (higher is better) and token counts
on the validation shard and on a few built-in kinds of text (prose, code, math, non-English), next
to GPT-2's and GPT-4's tokenizers (tiktoken "gpt2" and "cl100k_base").

    python -m scripts.tok_eval                                      # after python -m scripts.tok_train
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.tok_eval     # validation shard of the mirror

One process on the CPU. tiktoken downloads the GPT-2/GPT-4 vocabularies from the internet on first
use (and caches them in $TIKTOKEN_CACHE_DIR); without network, or without tiktoken installed (a dev
dependency), those columns are left out and the output says why. Prints a table and, as its last
line, one JSON object with the bytes per token of every row and tokenizer.
"""

import argparse
import json
import os
import sys
import threading

from nanochat.common import get_base_dir
from nanochat.dataset import parquets_iter_batched
from nanochat.runlog import save_results
from nanochat.tokenizer import Tokenizer

REFERENCES = [("gpt2", "gpt2"), ("gpt4", "cl100k_base")]  # (column name, tiktoken encoding)

# Short samples written for this script, one per kind of text.
SAMPLES = {
    "prose": (
        "The river had been rising for three days before anyone in the village thought to move the "
        "grain. By the time the elders agreed on a plan, the lower fields were already under water, "
        "and the children were sent to carry sacks up the hill to the old schoolhouse. Nobody "
        "complained; everyone understood that a wet harvest meant a hungry winter."
    ),
    "code": (
        "def moving_average(values, window=3):\n"
        "    \"\"\"Return the running mean of `values` over `window` items.\"\"\"\n"
        "    if window < 1:\n"
        "        raise ValueError(f\"window must be >= 1, got {window}\")\n"
        "    total, out = 0.0, []\n"
        "    for i, v in enumerate(values):\n"
        "        total += v\n"
        "        if i >= window:\n"
        "            total -= values[i - window]\n"
        "        out.append(total / min(i + 1, window))\n"
        "    return out\n"
    ),
    "math": (
        "Let $f(x) = 3x^2 - 12x + 7$. Completing the square gives $f(x) = 3(x - 2)^2 - 5$, so the "
        "minimum is $-5$ at $x = 2$. The roots solve $(x-2)^2 = 5/3$, i.e. "
        "$x = 2 \\pm \\sqrt{15}/3 \\approx 0.709$ or $3.291$. Check: $f(0) = 7$ and "
        "$\\int_0^2 f(x)\\,dx = [x^3 - 6x^2 + 7x]_0^2 = 8 - 24 + 14 = -2$."
    ),
    "german": (
        "Am Montag fuhr der Zug wegen eines Sturms mit fast zwei Stunden Verspätung ab. Die Fahrgäste "
        "nahmen es gelassen: Einige lasen Zeitung, andere tranken Kaffee aus dem Bordbistro, und ein "
        "kleines Mädchen erklärte seinem Großvater geduldig, warum Bäume im Herbst ihre Blätter verlieren."
    ),
    "chinese": (
        "春天来了，公园里的花都开了。每天早上，很多老人在湖边打太极拳，孩子们在草地上放风筝。"
        "下午下了一场小雨，空气变得特别清新。晚上我们一家人一起吃饭，聊了聊这个周末去哪里旅行。"
    ),
}


def load_reference(encoding_name, timeout):
    """(tiktoken Encoding, None) or (None, why it could not be loaded). Never raises, never hangs."""
    try:
        import tiktoken  # a dev dependency: the tool runs without it
    except ImportError:
        return None, "tiktoken is not installed (it is in the dev dependency group: `uv sync`)"
    result = {}

    def load():
        try:
            result["encoding"] = tiktoken.get_encoding(encoding_name)
        except Exception as e:
            result["error"] = e

    # tiktoken fetches the vocabulary with no timeout of its own: wait in a daemon thread instead.
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return None, f"timed out after {timeout:g}s downloading it (no network?)"
    if "error" in result:
        return None, (f"{type(result['error']).__name__} while downloading it: no network, and no copy in "
                      f"tiktoken's cache ($TIKTOKEN_CACHE_DIR)")
    return result["encoding"], None


def validation_docs(max_docs):
    """(first max_docs documents of the validation shard, None) or ([], why there are none)."""
    docs = []
    try:
        for batch in parquets_iter_batched("val"):
            docs.extend(d for d in batch if d is not None)
            if len(docs) >= max_docs:
                break
    except (FileNotFoundError, ValueError) as e:
        return [], str(e)
    return docs[:max_docs], None


def main():
    parser = argparse.ArgumentParser(description="Compare the tokenizer's compression with GPT-2's and GPT-4's.")
    parser.add_argument("--tokenizer-dir", default=None,
                        help="the tokenizer to evaluate (default: <base dir>/tokenizer, as saved by scripts.tok_train)")
    parser.add_argument("--val-docs", type=int, default=1000,
                        help="documents to use from the start of the validation shard (0 = skip it)")
    parser.add_argument("--reference-timeout", type=float, default=10.0,
                        help="seconds to wait for tiktoken to load each reference tokenizer")
    args = parser.parse_args()
    if args.val_docs < 0 or args.reference_timeout <= 0:
        parser.error("--val-docs must be >= 0 and --reference-timeout > 0")

    tokenizer_dir = args.tokenizer_dir or os.path.join(get_base_dir(), "tokenizer")
    try:
        ours = Tokenizer.from_directory(tokenizer_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"tok_eval: error: {e}")
    print(f"ours: {tokenizer_dir} (vocab {ours.get_vocab_size():,})")

    # ---- tokenizers: ours, plus each reference that loads; encode(list of texts) -> list of id lists
    encoders = {"ours": lambda texts: ours.encode(texts)}
    for column, encoding_name in REFERENCES:
        enc, why = load_reference(encoding_name, args.reference_timeout)
        if enc is None:
            print(f"{column}: tiktoken '{encoding_name}' could NOT be loaded: {why}; its columns are left out")
        else:
            print(f"{column}: tiktoken '{encoding_name}' (vocab {enc.n_vocab:,})")
            encoders[column] = enc.encode_ordinary_batch

    # ---- texts: the built-in samples, then the validation shard
    texts = {kind: [text] for kind, text in SAMPLES.items()}
    if args.val_docs > 0:
        docs, why = validation_docs(args.val_docs)
        if docs:
            print(f"validation shard: the first {len(docs):,} documents")
            texts["val"] = docs
        else:
            print(f"validation shard: skipped: {why}")

    # ---- encode and measure
    rows = []  # (kind, bytes, {tokenizer: token count})
    for kind, batch in texts.items():
        num_bytes = sum(len(t.encode("utf-8")) for t in batch)
        counts = {}
        for name, encode in encoders.items():
            ids = encode(batch)
            counts[name] = sum(len(row) for row in ids)
            if name == "ours":
                assert [ours.decode(row) for row in ids] == batch, f"our tokenizer does not round-trip the {kind} text"
        rows.append((kind, num_bytes, counts))

    # ---- table
    refs = [name for name in encoders if name != "ours"]
    header = f"{'text':<18} {'bytes':>10} | {'ours tok':>9} {'B/tok':>6}"
    for name in refs:
        header += f" | {name + ' tok':>9} {'B/tok':>6} {'ours vs':>8}"
    print()
    print("Compression: UTF-8 bytes per token (B/tok, higher is better).")
    if refs:
        print("'ours vs' = (our tokens - their tokens) / their tokens: negative means ours needs fewer tokens.")
    print(header)
    print("-" * len(header))
    for kind, num_bytes, counts in rows:
        line = f"{kind:<18} {num_bytes:>10,} | {counts['ours']:>9,} {num_bytes / counts['ours']:>6.2f}"
        for name in refs:
            delta = (counts["ours"] - counts[name]) / counts[name] * 100
            line += f" | {counts[name]:>9,} {num_bytes / counts[name]:>6.2f} {delta:>+7.1f}%"
        print(line)
    missing = [f"{col} ({enc})" for col, enc in REFERENCES if col not in encoders]
    if missing:
        print(f"not compared (could not be loaded, see above): {', '.join(missing)}")
    result = {
        "vocab_size": ours.get_vocab_size(),
        "bytes_per_token": {kind: {name: round(num_bytes / n, 4) for name, n in counts.items()}
                            for kind, num_bytes, counts in rows},
        "not_loaded": missing,
    }
    save_results("tok_eval", config=vars(args),
                 metrics={f"{kind} bytes/token": bpt["ours"] for kind, bpt in result["bytes_per_token"].items()},
                 extra=result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
