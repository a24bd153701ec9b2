"""
Evaluate a checkpoint on CORE (the DCLM paper's 22 in-context tasks; see nanochat/core_eval.py).

    python -m scripts.base_eval                                   # the largest base model, latest step
    python -m scripts.base_eval --model-tag=d4 --step=200 --eval-items=100     # a fast approximate run
    python -m scripts.base_eval -i sft -a hellaswag,arc_easy      # a chat checkpoint, two tasks
    torchrun --nproc_per_node=8 -m scripts.base_eval              # items spread over 8 GPUs
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.base_eval --device-type=cpu --eval-items=20

The eval bundle comes from $NANOCHAT_DATA_DIR/core/ when a data mirror is set, else it is downloaded
once into get_base_dir()/eval_bundle. Each task's items are shuffled with a fixed seed, so
--eval-items N scores the same N items every time (their few-shot examples are drawn from the whole
task). Prints one line per task as it finishes, then a table and CORE (the mean centred accuracy;
accuracies and centred accuracies are fractions, 0..1) with their item counts and 95% intervals
(Wilson per task, a seeded bootstrap for CORE; nanochat/stats.py), and records the run with
nanochat.runlog.save_results in get_base_dir()/results/base_eval_<model_tag>_<step>.json
(base_eval_<source>_<model_tag>_<step>.json for -i mid|sft|rl). --dtype auto as the training
stages decide it (nanochat.common; before, autocast was bf16 on CUDA and off elsewhere).
"""

import argparse
import sys

from nanochat import core_eval
from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, load_model
from nanochat.common import autocast_ctx, compute_cleanup, compute_init, decide_compute_dtype, get_base_dir, print0
from nanochat.flags import add_compute_flags, add_eval_items_flag, add_source_flags
from nanochat.core_bundle import load_core_tasks
from nanochat.runlog import save_results
from nanochat.stats import fmt_estimate, interval_record

parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the CORE metric.")
add_source_flags(parser, tuple(sorted(SOURCE_DIRS)), default="base")
add_compute_flags(parser)
# evaluation
parser.add_argument("-a", "--tasks", default=None,
                    help="comma-separated task labels of core.yaml (default: all 22)")
add_eval_items_flag(parser, default=None)
parser.add_argument("--batch-size", type=int, default=None,
                    help="items per forward pass, all options of an item together (default: 8 fast, 1 with --no-fast)")
parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                    help="score with the head at the scored positions only and shared prefixes run once "
                         "(--no-fast: the reference path, full logits; same scores, several times slower)")
args = parser.parse_args()
if args.eval_items is not None and args.eval_items < 1:
    parser.error(f"--eval-items must be a positive number of items (omit it for all), got {args.eval_items}")
if args.batch_size is not None and args.batch_size < 1:
    parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
task_labels = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
if task_labels == []:
    parser.error(f"--tasks {args.tasks!r} names no task; give comma-separated labels of core.yaml")


def fail(message):
    """A user-facing error: one clear line, no traceback, every rank leaves."""
    compute_cleanup()
    sys.exit(f"base_eval: error: {message}")


# -----------------------------------------------------------------------------
# compute, bundle, tasks (checked before the model is loaded)

info = compute_init(args.device_type)
device, master = info.device, info.master
try:
    dtype, why = decide_compute_dtype(info.device_type, args.dtype)
except ValueError as e:
    fail(e)
autocast = autocast_ctx(info.device_type, dtype)
try:
    bundle_dir = core_eval.prepare_core_bundle()
    all_tasks = load_core_tasks(bundle_dir)
except (OSError, RuntimeError, ValueError) as e:
    fail(e)
try:
    tasks = core_eval.select_core_tasks(bundle_dir, task_labels)
except ValueError as e:
    fail(f"--tasks: {e}")

# -----------------------------------------------------------------------------
# model (load_model resolves the tag and step and says which in its meta)

try:
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step,
                                        hf_path=args.hf_path)
except (FileNotFoundError, CheckpointError) as e:
    fail(f"cannot load the {args.source} model: {e}. Train one first, or choose another with "
         f"-i/--model-tag/--step (NANOCHAT_BASE_DIR={get_base_dir()})")
model_tag, step = meta["model_tag"], meta["step"]
print0(f"{args.source} model {model_tag} step {step}: {model.num_params():,} parameters, "
       f"context {model.config.sequence_len} tokens | compute dtype {str(dtype).removeprefix('torch.')} ({why})")
print0(f"eval bundle: {bundle_dir}; {len(tasks)} tasks; "
       f"{'all items' if args.eval_items is None else f'at most {args.eval_items} items per task'}; "
       f"{'fast' if args.fast else 'reference'} scoring; world size {info.world_size}")

# -----------------------------------------------------------------------------
# evaluation

try:
    with autocast:
        out = core_eval.evaluate_core(model, tokenizer, device, max_per_task=args.eval_items,
                                      tasks=[t["label"] for t in tasks], fast=args.fast,
                                      batch_size=args.batch_size, progress=master)
except ValueError as e:  # e.g. a continuation longer than the model's context
    fail(e)
core, results = out["core"], out["tasks"]

# -----------------------------------------------------------------------------
# report

header = (f"{'task':<34} {'kind':<17} {'shots':>5} {'n':>6} {'accuracy':>8} {'centred':>8} {'95% interval':>17} "
          f"{'seconds':>8}")
print0("\n" + header)
print0("-" * len(header))
for t in tasks:
    r = results[t["label"]]
    low, high = r["interval"]
    print0(f"{t['label']:<34} {t['task_type']:<17} {t['num_fewshot']:>5} {r['items']:>6} {r['accuracy']:>8.4f} "
           f"{r['centered']:>+8.4f} {f'[{low:+.3f}, {high:+.3f}]':>17} {r['seconds']:>8.1f}")
print0("-" * len(header))
total_items, total_seconds = sum(r["items"] for r in results.values()), sum(r["seconds"] for r in results.values())
low, high = out["core_interval"]
print0(f"{'CORE':<34} {'':<17} {'':>5} {total_items:>6} {'':>8} {core:>+8.4f} {f'[{low:+.3f}, {high:+.3f}]':>17} "
       f"{total_seconds:>8.1f}")
print0(f"CORE: {fmt_estimate(core, out['core_interval'], total_items, percent=False)} (95%: a seeded bootstrap over "
       f"each task's items; a task's centred accuracy: Wilson)")
if len(results) < len(all_tasks) or args.eval_items is not None:
    print0("(partial run: not comparable to a full CORE score)")

if master:
    name = f"base_eval_{model_tag}_{step:06d}" if args.source == "base" else \
        f"base_eval_{args.source}_{model_tag}_{step:06d}"
    metrics = {"CORE": core, **{label: r["centered"] for label, r in results.items()}}
    intervals = {label: interval_record(*r["interval"], r["items"], "wilson") for label, r in results.items()}
    intervals["CORE"] = interval_record(*out["core_interval"], total_items, "bootstrap")
    extra = {"tasks": {t["label"]: dict(kind=t["task_type"], shots=t["num_fewshot"], **results[t["label"]])
                       for t in tasks}, "intervals": intervals, "world_size": info.world_size}
    path = save_results("base_eval", name=name, config=vars(args), metrics=metrics, source=args.source,
                        model_tag=model_tag, step=step, extra=extra)
    print0(f"wrote {path}")

compute_cleanup(together=True)
