"""Benchmark rustbpe against the references: training speed, compression and encoding speed.

On the first --mb MB of the training shards ($NANOCHAT_DATA_DIR/pretrain, default ../shared/data
next to the repository; every shard but the last), train at --vocab-size with
  (a) our rustbpe,
  (b) PyPI's rustbpe==0.1.0 (same module name as ours, so it runs from a virtual environment of
      its own that this script creates with uv under <artifacts>/tok_bench/),
  (c) Hugging Face tokenizers' BpeTrainer with the same split regex,
each in a worker subprocess, interleaved a, b, c, a, b, c, ... and timed inside the worker (process
start and text loading excluded). Then compression (bytes per token) of each on the validation
shard, and encoding throughput on it: ours vs tiktoken built from our ranks, one thread (one call
per document) and batched with 2 threads. Prints a table and, last, one JSON line.

Run:  uv run python -m scripts.tok_bench                    # full: 100 MB, 3 runs each
      uv run python -m scripts.tok_bench --mb 20 --runs 1   # quick
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPI_RUSTBPE = "rustbpe==0.1.0"

# -----------------------------------------------------------------------------------------------
# Workers: one training run in a fresh process. They import only what they need, so the PyPI
# venv (which has nothing but rustbpe) can run this same file.


def worker(kind, docs_path, vocab_size, pattern, out_path, val_path):
    with open(docs_path, encoding="utf-8") as f:
        docs = json.load(f)
    result = {}
    if kind in ("ours", "pypi"):
        import rustbpe

        tok = rustbpe.Tokenizer()
        t0 = time.perf_counter()
        tok.train_from_iterator(iter(docs), vocab_size, pattern=pattern)
        result["seconds"] = time.perf_counter() - t0
        result["ranks"] = [(b.hex(), r) for b, r in tok.get_mergeable_ranks()]
        result["pattern"] = tok.get_pattern()
    elif kind == "hf":
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            min_frequency=0,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
        )
        t0 = time.perf_counter()
        tok.train_from_iterator(docs, trainer)
        result["seconds"] = time.perf_counter() - t0
        with open(val_path, encoding="utf-8") as f:
            val = json.load(f)
        result["val_tokens"] = sum(len(e.ids) for e in tok.encode_batch(val, add_special_tokens=False))
        result["vocab_size"] = tok.get_vocab_size()
    else:
        raise ValueError(f"unknown worker kind {kind!r}")
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(result, f)


# -----------------------------------------------------------------------------------------------
# Driver


def load_texts(data_dir, mb):
    import pyarrow.parquet as pq

    pretrain = os.path.join(data_dir, "pretrain")
    if not os.path.isdir(pretrain):
        sys.exit(f"tok_bench: no folder {pretrain}; set NANOCHAT_DATA_DIR or --data-dir to the data mirror")
    shards = sorted(f for f in os.listdir(pretrain) if f.startswith("shard_") and f.endswith(".parquet"))
    if len(shards) < 2:
        sys.exit(f"tok_bench: {pretrain} needs at least 2 shards (training + validation); found {len(shards)}")
    docs, nbytes = [], 0
    for shard in shards[:-1]:
        for text in pq.read_table(os.path.join(pretrain, shard), columns=["text"]).column("text").to_pylist():
            if nbytes >= mb * 1e6:
                break
            docs.append(text)
            nbytes += len(text.encode("utf-8"))
    val = pq.read_table(os.path.join(pretrain, shards[-1]), columns=["text"]).column("text").to_pylist()
    return docs, nbytes, val


def make_pypi_venv(work_dir):
    """A venv holding only PyPI's rustbpe; returns its python, or exits with a clear error."""
    venv = os.path.join(work_dir, "pypi_rustbpe_venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        cmds = [
            ["uv", "venv", "-q", venv, "--python", sys.executable],
            ["uv", "pip", "install", "-q", "--python", python, PYPI_RUSTBPE],
        ]
        for cmd in cmds:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"tok_bench: could not install {PYPI_RUSTBPE} ({' '.join(cmd)}):\n{proc.stderr}")
    return python


def run_worker(python, kind, args, paths, out_path):
    cmd = [python, os.path.abspath(__file__), "--worker", kind, "--docs-path", paths["docs"]]
    cmd += ["--vocab-size", str(args.vocab_size), "--out-path", out_path, "--val-path", paths["val"]]
    cmd += ["--pattern", args.pattern]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=paths["work"])
    if proc.returncode != 0:
        sys.exit(f"tok_bench: worker {kind} failed:\n{proc.stderr}")
    with open(out_path, encoding="utf-8") as f:
        return json.load(f)


def tiktoken_from(ranks_hex, pattern, name):
    import tiktoken

    ranks = {bytes.fromhex(h): r for h, r in ranks_hex}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # data
    default_data = os.environ.get("NANOCHAT_DATA_DIR") or os.path.join(REPO, "..", "shared", "data")
    parser.add_argument("--data-dir", default=default_data, help="data mirror holding pretrain/shard_*.parquet")
    parser.add_argument("--mb", type=float, default=100, help="MB of training text (whole documents)")
    # training
    parser.add_argument("--vocab-size", type=int, default=32768, help="vocabulary size incl. the 256 bytes")
    parser.add_argument("--pattern", default=None, help="split regex (default: rustbpe.GPT4_PATTERN)")
    parser.add_argument("--runs", type=int, default=3, help="training runs per trainer (interleaved)")
    parser.add_argument("--encode-runs", type=int, default=5, help="encoding runs per mode (interleaved)")
    parser.add_argument("--skip-references", action="store_true", help="train only ours (quick profiling)")
    # output
    parser.add_argument("--work-dir", default=None, help="artifacts folder (default <base dir>/tok_bench)")
    # worker mode (internal)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--docs-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--val-path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.docs_path, args.vocab_size, args.pattern, args.out_path, args.val_path)
        return

    import rustbpe
    import tiktoken  # noqa: F401  (fail early if the dev group is not installed)

    if args.pattern is None:
        args.pattern = rustbpe.GPT4_PATTERN
    if args.runs < 1 or args.encode_runs < 1:
        sys.exit("tok_bench: --runs and --encode-runs must be at least 1")
    if args.work_dir is None:
        from nanochat.common import get_base_dir

        args.work_dir = os.path.join(get_base_dir(), "tok_bench")
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"config: {vars(args)}")

    docs, nbytes, val = load_texts(args.data_dir, args.mb)
    val_bytes = sum(len(t.encode("utf-8")) for t in val)
    print(f"train text: {len(docs):,} docs, {nbytes / 1e6:.1f} MB; validation: {len(val):,} docs, {val_bytes / 1e6:.1f} MB")
    paths = {"work": args.work_dir, "docs": os.path.join(args.work_dir, "docs.json"), "val": os.path.join(args.work_dir, "val.json")}
    for path, obj in [(paths["docs"], docs), (paths["val"], val)]:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(obj, f)
        os.replace(path + ".tmp", path)

    kinds = {"ours": sys.executable}
    if not args.skip_references:
        kinds["pypi"] = make_pypi_venv(args.work_dir)
        kinds["hf"] = sys.executable
    seconds = {k: [] for k in kinds}
    last = {}
    for run in range(args.runs):
        for kind, python in kinds.items():
            result = run_worker(python, kind, args, paths, os.path.join(args.work_dir, f"result_{kind}.json"))
            seconds[kind].append(result["seconds"])
            last[kind] = result
            print(f"run {run + 1}/{args.runs} {kind:5s}: {result['seconds']:.2f} s")

    # compression on the validation shard (ours and PyPI's through tiktoken, the same encoder)
    bytes_per_token = {}
    for kind in ("ours", "pypi"):
        if kind in last:
            enc = tiktoken_from(last[kind]["ranks"], last[kind]["pattern"], kind)
            bytes_per_token[kind] = val_bytes / sum(map(len, enc.encode_ordinary_batch(val, num_threads=2)))
    if "hf" in last:
        bytes_per_token["hf"] = val_bytes / last["hf"]["val_tokens"]

    # encoding throughput: ours vs tiktoken with our ranks, interleaved
    ours = rustbpe.Tokenizer.from_ranks([(bytes.fromhex(h), r) for h, r in last["ours"]["ranks"]], args.pattern)
    tik = tiktoken_from(last["ours"]["ranks"], args.pattern, "ours")
    modes = {
        "ours_1thread": lambda: [ours.encode(t) for t in val],
        "tiktoken_1thread": lambda: [tik.encode_ordinary(t) for t in val],
        "ours_batch": lambda: ours.encode_batch(val),
        "tiktoken_batch": lambda: tik.encode_ordinary_batch(val, num_threads=2),
    }
    mb_per_s = {m: [] for m in modes}
    outputs = {}
    for _ in range(args.encode_runs):
        for mode, fn in modes.items():
            t0 = time.perf_counter()
            outputs[mode] = fn()
            mb_per_s[mode].append(val_bytes / 1e6 / (time.perf_counter() - t0))
    assert all(out == outputs["tiktoken_1thread"] for out in outputs.values()), "encodings differ from tiktoken"

    # report
    med = {k: statistics.median(v) for k, v in seconds.items()}
    names = {"ours": "rustbpe (ours)", "pypi": f"PyPI {PYPI_RUSTBPE}", "hf": "HF tokenizers BpeTrainer"}
    print(f"\n| trainer | train s (median of {args.runs}) | runs | vs ours | val bytes/token |")
    print("|---|---|---|---|---|")
    for k in kinds:
        runs = ", ".join(f"{s:.2f}" for s in seconds[k])
        print(f"| {names[k]} | {med[k]:.2f} | {runs} | {med[k] / med['ours']:.2f}x | {bytes_per_token[k]:.4f} |")
    enc_med = {m: statistics.median(v) for m, v in mb_per_s.items()}
    print(f"\n| encoding (validation shard, median of {args.encode_runs}) | ours MB/s | tiktoken MB/s | speedup |")
    print("|---|---|---|---|")
    for mode in ("1thread", "batch"):
        o, t = enc_med[f"ours_{mode}"], enc_med[f"tiktoken_{mode}"]
        label = "one thread, encode per doc" if mode == "1thread" else "batched, 2 threads"
        print(f"| {label} | {o:.2f} | {t:.2f} | {o / t:.2f}x |")

    summary = {
        "train_mb": round(nbytes / 1e6, 1),
        "vocab_size": args.vocab_size,
        "runs": args.runs,
        "train_seconds_median": {k: round(v, 3) for k, v in med.items()},
        "bytes_per_token": {k: round(v, 4) for k, v in bytes_per_token.items()},
        "encode_mb_per_s_median": {k: round(v, 2) for k, v in enc_med.items()},
        "encode_speedup_vs_tiktoken_1thread": round(enc_med["ours_1thread"] / enc_med["tiktoken_1thread"], 3),
        "encode_speedup_vs_tiktoken_batch": round(enc_med["ours_batch"] / enc_med["tiktoken_batch"], 3),
    }
    if not args.skip_references:
        best = min(med["pypi"], med["hf"])
        summary["train_speedup_vs_best_reference"] = round(best / med["ours"], 3)
        # relative: > 0 means ours compresses better (more bytes per token) than PyPI's
        delta = (bytes_per_token["ours"] - bytes_per_token["pypi"]) / bytes_per_token["pypi"]
        summary["compression_delta_vs_pypi_rustbpe"] = round(delta, 5)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
