"""
Time-to-bpb on this machine: pretrain a depth-4, sequence-512 model on the data mirror for a fixed
training-time budget and report throughput, MFU and the validation bpb reached at 2, 5 and 10 minutes.

    python -m scripts.base_bench                 # 10 minutes (the number for dev/LOG.md)
    python -m scripts.base_bench --minutes 2     # a quick check

It runs `python -m scripts.base_train` (one process, the default device) with --max-train-minutes, so
the learning-rate schedule (warm-down included) spans the whole budget, evaluation time is not counted
and val bpb is measured when the training time passes 2 and 5 minutes and at the end. The run works in
a temporary base dir holding a copy of the project's tokenizer (get_base_dir()/tokenizer, made by
scripts/tok_train.py), so it leaves no checkpoints behind. Data: $NANOCHAT_DATA_DIR, else ../shared/data.

Prints a table and, as its last line, one JSON object: tok_per_s, mfu, bpb_at_2min, bpb_at_5min,
bpb_at_10min (null where the budget was shorter), plus the settings.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from nanochat.common import get_base_dir
from nanochat.flags import DEVICE_TYPES, renamed

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINTS = (2, 5, 10)  # minutes of training time at which val bpb is reported

parser = argparse.ArgumentParser(description="Time-to-bpb benchmark of pretraining (depth 4, sequence 512).")
parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget in minutes (evaluation excluded)")
parser.add_argument("--depth", type=int, default=4, help="model depth")
parser.add_argument("--max-seq-len", type=int, default=512, help="sequence length")
parser.add_argument("--device-batch-size", type=int, default=8, help="rows per forward/backward")
parser.add_argument("--total-batch-tokens", type=int, default=4096, help="tokens per optimizer step")
renamed(parser, "--total-batch-size", "--total-batch-tokens")
parser.add_argument("--eval-tokens", type=int, default=16384, help="val tokens per evaluation")
parser.add_argument("--device-type", default=None, choices=DEVICE_TYPES, help="device (default: autodetect)")
parser.add_argument("--data-dir", default=None, help="data mirror (default: $NANOCHAT_DATA_DIR, else ../shared/data)")
args = parser.parse_args()

data_dir = args.data_dir or os.environ.get("NANOCHAT_DATA_DIR") or os.path.join(REPO_ROOT, "..", "shared", "data")
tokenizer_dir = os.path.join(get_base_dir(), "tokenizer")
if not os.path.isdir(os.path.join(data_dir, "pretrain")):
    sys.exit(f"base_bench: error: no pretrain/ folder in the data mirror {data_dir}; pass --data-dir or set NANOCHAT_DATA_DIR")
if not os.path.isdir(tokenizer_dir):
    sys.exit(f"base_bench: error: no tokenizer in {tokenizer_dir}; train one with `python -m scripts.tok_train`")

with tempfile.TemporaryDirectory(prefix="nanochat_bench_") as base_dir:
    shutil.copytree(tokenizer_dir, os.path.join(base_dir, "tokenizer"))
    env = dict(os.environ, NANOCHAT_BASE_DIR=base_dir, NANOCHAT_DATA_DIR=os.path.abspath(data_dir))
    eval_at = ",".join(str(m) for m in CHECKPOINTS if m < args.minutes)
    cmd = [sys.executable, "-m", "scripts.base_train", f"--depth={args.depth}", f"--max-seq-len={args.max_seq_len}",
           f"--device-batch-size={args.device_batch_size}", f"--total-batch-tokens={args.total_batch_tokens}",
           f"--max-train-minutes={args.minutes}", f"--eval-at-minutes={eval_at}", "--eval-every=-1",
           f"--eval-tokens={args.eval_tokens}", "--sample-every=-1", "--save-every=0", "--model-tag=bench",
           *([f"--device-type={args.device_type}"] if args.device_type else [])]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)
    run_dir = os.path.join(base_dir, "base_checkpoints", "bench")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        evals = [rec for rec in map(json.loads, f) if "val_bpb" in rec]

print(f"\n{'train time (min)':>16} | {'val bpb':>8}")
for rec in evals:
    print(f"{rec['train_time'] / 60:>16.2f} | {rec['val_bpb']:>8.4f}")
result = dict(tok_per_s=summary["tok_per_s"], mfu=summary["mfu"])
for m in CHECKPOINTS:
    if m > args.minutes:
        result[f"bpb_at_{m}min"] = None
    elif m == args.minutes:
        result[f"bpb_at_{m}min"] = summary["final_val_bpb"]
    else:  # the first evaluation once the training time passed m minutes
        result[f"bpb_at_{m}min"] = next(r["val_bpb"] for r in evals if r["train_time"] >= m * 60)
result.update(minutes=args.minutes, depth=args.depth, max_seq_len=args.max_seq_len,
              total_batch_tokens=args.total_batch_tokens, steps=summary["step"], total_tokens=summary["total_tokens"])
print(f"tok/s {result['tok_per_s']:,.0f} | MFU {100 * (result['mfu'] or 0):.1f}% | {summary['step']} steps")
print(json.dumps(result))
