"""
Evaluate a base checkpoint on CORE (the DCLM paper's 22 in-context tasks; see nanochat/core_eval.py).

    python -m scripts.base_eval                                   # the largest base model, latest step
    python -m scripts.base_eval --model-tag=d4 --step=200 --max-per-task=100   # a fast approximate run
    torchrun --nproc_per_node=8 -m scripts.base_eval              # items spread over 8 GPUs
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.base_eval --device-type=cpu --max-per-task=20

The eval bundle comes from $NANOCHAT_DATA_DIR/core/ when a data mirror is set, else it is downloaded
once into get_base_dir()/eval_bundle. Each task's items are shuffled with a fixed seed, so
--max-per-task N scores the same N items every time (their few-shot examples are drawn from the whole
task). Prints one line per task as it finishes, then a table and CORE (the mean centred accuracy), and
writes a CSV to get_base_dir()/base_eval/<model_tag>_<step>.csv (or --output).
"""

import argparse
import csv
import os
import random
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist

from nanochat import core_eval
from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, find_largest_model, latest_step, load_model
from nanochat.common import compute_cleanup, compute_init, get_base_dir, print0

DATA_SHUFFLE_SEED = 1337  # fixes which items --max-per-task keeps

parser = argparse.ArgumentParser(description="Evaluate a base checkpoint on the CORE metric.")
# model
parser.add_argument("--model-tag", default=None, help="model folder under base_checkpoints, e.g. d20 (default: the largest)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step to load (default: the latest)")
# evaluation
parser.add_argument("--max-per-task", type=int, default=-1,
                    help="score only the first N items of each task after a fixed shuffle (-1: all items)")
parser.add_argument("--tasks", default="", help="comma-separated task labels to run (default: all 22 of core.yaml)")
parser.add_argument("--batch-size", type=int, default=1,
                    help="items per forward pass (all options of an item always share one)")
# runtime
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
# output
parser.add_argument("--output", default="", help="CSV path (default: <base dir>/base_eval/<model_tag>_<step>.csv)")
args = parser.parse_args()
if args.max_per_task == 0 or args.max_per_task < -1:
    parser.error(f"--max-per-task must be a positive number of items or -1 for all, got {args.max_per_task}")
if args.batch_size < 1:
    parser.error(f"--batch-size must be at least 1, got {args.batch_size}")


def fail(message):
    """A user-facing error: one clear line, no traceback, every rank leaves."""
    compute_cleanup()
    sys.exit(f"base_eval: error: {message}")


# -----------------------------------------------------------------------------
# compute, bundle, tasks

info = compute_init(args.device_type)
device, master = info.device, info.master
autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if info.device_type == "cuda" else nullcontext()

# rank 0 downloads the bundle (when there is no mirror) while the others wait, then everyone reads it
bundle_error = [None]
if master:
    try:
        core_eval.get_core_bundle_dir()
    except (OSError, RuntimeError) as e:
        bundle_error = [str(e)]
if info.ddp:
    dist.broadcast_object_list(bundle_error, src=0)  # every rank learns whether rank 0 succeeded
if bundle_error[0] is not None:
    fail(bundle_error[0])
try:
    bundle_dir = core_eval.get_core_bundle_dir()
    tasks = core_eval.load_core_tasks(bundle_dir)
except (OSError, RuntimeError, ValueError) as e:
    fail(e)
if args.tasks:
    wanted = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(wanted) - {t["label"] for t in tasks})
    if unknown:
        fail(f"--tasks names {unknown}, which core.yaml does not list; choose from {[t['label'] for t in tasks]}")
    tasks = [t for t in tasks if t["label"] in wanted]

# -----------------------------------------------------------------------------
# model

checkpoints_root = os.path.join(get_base_dir(), SOURCE_DIRS["base"])
try:
    model_tag = args.model_tag or find_largest_model(checkpoints_root)
    step = args.step if args.step is not None else latest_step(os.path.join(checkpoints_root, model_tag))
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=model_tag, step=step)
except (FileNotFoundError, CheckpointError) as e:
    fail(f"cannot load the base model: {e}. Train one with `python -m scripts.base_train`, or choose another "
         f"with --model-tag/--step (NANOCHAT_BASE_DIR={get_base_dir()})")
print0(f"model {model_tag} step {step}: {model.num_params():,} parameters, context {model.config.sequence_len} tokens")
print0(f"eval bundle: {bundle_dir}; {len(tasks)} tasks; "
       f"{'all items' if args.max_per_task == -1 else f'at most {args.max_per_task} items per task'}; "
       f"world size {info.world_size}")

# -----------------------------------------------------------------------------
# evaluation

results = []  # one dict per task
start_all = time.time()
for i, task in enumerate(tasks):
    data = core_eval.load_task_data(bundle_dir, task)
    random.Random(DATA_SHUFFLE_SEED).shuffle(data)
    n = len(data) if args.max_per_task == -1 else min(args.max_per_task, len(data))
    t0 = time.time()
    try:
        with autocast:
            accuracy = core_eval.evaluate_task(model, tokenizer, data, device, task, max_items=n,
                                               batch_size=args.batch_size, progress=master)
    except ValueError as e:  # e.g. a continuation longer than the model's context
        fail(e)
    seconds = time.time() - t0
    centered = core_eval.centered_accuracy(accuracy, task["random_baseline"])
    results.append(dict(task=task["label"], kind=task["task_type"], shots=task["num_fewshot"], n=n,
                        accuracy=accuracy, centered=centered, seconds=seconds))
    print0(f"[{i + 1:2d}/{len(tasks)}] {task['label']:<34} accuracy {accuracy:.4f}  centred {centered:+.4f}  "
           f"{seconds:7.1f}s ({1000 * seconds / max(n, 1):.0f} ms/item)", flush=True)
core = core_eval.core_metric({r["task"]: r["centered"] for r in results})
total_seconds = time.time() - start_all

# -----------------------------------------------------------------------------
# report

header = f"{'task':<34} {'kind':<17} {'shots':>5} {'n':>6} {'accuracy':>8} {'centred':>8} {'seconds':>8}"
print0("\n" + header)
print0("-" * len(header))
for r in results:
    print0(f"{r['task']:<34} {r['kind']:<17} {r['shots']:>5} {r['n']:>6} {r['accuracy']:>8.4f} "
           f"{r['centered']:>+8.4f} {r['seconds']:>8.1f}")
print0("-" * len(header))
print0(f"{'CORE':<34} {'':<17} {'':>5} {sum(r['n'] for r in results):>6} {'':>8} {core:>+8.4f} {total_seconds:>8.1f}")
if len(results) < 22 or args.max_per_task != -1:
    print0("(partial run: not comparable to a full CORE score)")

if master:
    out_path = args.output or os.path.join(get_base_dir(), "base_eval", f"{model_tag}_{step:06d}.csv")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp_path = f"{out_path}.tmp{os.getpid()}"
    with open(tmp_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "kind", "shots", "n", "accuracy", "centered", "seconds"])
        for r in results:
            writer.writerow([r["task"], r["kind"], r["shots"], r["n"], f"{r['accuracy']:.6f}",
                             f"{r['centered']:.6f}", f"{r['seconds']:.2f}"])
        writer.writerow(["CORE", "", "", sum(r["n"] for r in results), "", f"{core:.6f}", f"{total_seconds:.2f}"])
    os.replace(tmp_path, out_path)  # a reader never sees half a CSV
    print0(f"wrote {out_path}")

compute_cleanup()
