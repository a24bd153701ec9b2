"""
Evaluate a chat checkpoint (mid, sft or rl) on the chat tasks and report ChatCORE.

    python -m scripts.chat_eval -i sft                                  # all tasks, one process
    python -m scripts.chat_eval -i sft -a ARC-Easy,GSM8K --eval-items 50
    torchrun --nproc_per_node=8 -m scripts.chat_eval -- -i sft          # items spread over 8 GPUs
    python -m scripts.chat_eval -i sft --device-type cpu --eval-items 20     # a quick CPU check

Categorical tasks (ARC, MMLU) compare the logits of the answer letters; generative tasks (GSM8K,
HumanEval, SpellingBee) sample through the engine, all of a rank's problems batched together
(greedy unless --temperature > 0; pass@k with --num-samples). Prints each task's accuracy and
ChatCORE (see nanochat/task_eval.py; accuracies and centred accuracies are fractions, 0..1), each
with its item count and 95% interval (Wilson; ChatCORE: a seeded bootstrap; nanochat/stats.py),
records the run with nanochat.runlog.save_results in
get_base_dir()/results/chat_eval_<source>_<model_tag>_<step>.json, and prints the metrics as a
last line of JSON: {"ARC-Easy": accuracy, ..., "ChatCORE": score} (only the tasks run). The tasks
are tasks/registry.py's EVAL_TASKS; --dtype auto as the training stages decide it (nanochat.common).
"""

import argparse
import json
import os
import time

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import autocast_ctx, compute_cleanup, compute_init, decide_compute_dtype, print0
from nanochat.execution import ALLOW_WEAKER_ENV, SandboxUnavailable, execute
from nanochat.flags import add_compute_flags, add_eval_items_flag, add_reply_flags, add_source_flags
from nanochat.runlog import save_results
from nanochat.stats import fmt_estimate
from nanochat.task_eval import chatcore, evaluate_task, score_intervals
from tasks.registry import EVAL_TASKS as TASKS
from tasks.registry import load_eval_task

parser = argparse.ArgumentParser(description="Evaluate a chat model on ARC, MMLU, GSM8K, HumanEval, SpellingBee.")
add_source_flags(parser, ("mid", "sft", "rl"))
add_compute_flags(parser)
# tasks
parser.add_argument("-a", "--tasks", default=",".join(TASKS),
                    help="comma-separated tasks (default: all of %(default)s)")
add_eval_items_flag(parser, default=None)
# generation
parser.add_argument("--num-samples", type=int, default=1, help="samples per generative item (pass@k)")
add_reply_flags(parser, max_new_tokens=512, temperature=0.0, top_k=50)
parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (categorical tasks)")
parser.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True,
                    help="batched scoring and generation (--no-fast: the one-at-a-time reference paths)")
parser.add_argument("--allow-weaker-sandbox", action="store_true",
                    help="run HumanEval even where some of the sandbox's walls cannot be built (not root, "
                         "not Linux); without it HumanEval is skipped there, with the missing walls named")
args = parser.parse_args()

task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
unknown = [t for t in task_names if t not in TASKS]
if unknown or not task_names:
    parser.error(f"unknown task(s) {unknown or args.tasks!r}; choose from {','.join(TASKS)} (comma-separated)")
for flag in ("num_samples", "max_new_tokens", "batch_size"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
if args.eval_items is not None and args.eval_items < 1:
    parser.error(f"--eval-items must be a positive number of items (omit it for all), got {args.eval_items}")
if args.temperature < 0:
    parser.error(f"--temperature must be >= 0, got {args.temperature}")
if args.top_k < 0:
    parser.error(f"--top-k must be >= 0 (0 = none), got {args.top_k}")

if args.allow_weaker_sandbox:
    os.environ[ALLOW_WEAKER_ENV] = "1"  # read by every execute() call of HumanEval's checks
if "HumanEval" in task_names:  # the sandbox says here, before any model runs, whether it can run code
    try:
        probe = execute("pass", timeout=5.0)
        why = None if probe.success else f"the sandbox could not run a trivial program ({probe.error})"
    except SandboxUnavailable as e:
        why = f"{e} Pass --allow-weaker-sandbox to run the model's code with those walls missing"
    if why:  # scoring anyway would report every program as failed: a zero that measures nothing
        print0(f"chat_eval: HumanEval skipped, not scored: {why}")
        task_names.remove("HumanEval")
        if not task_names:
            parser.exit(1, "chat_eval: no task left to run\n")

compute = compute_init(args.device_type)
try:
    model, tokenizer, meta = load_model(args.source, compute.device, phase="eval", model_tag=args.model_tag, step=args.step,
                                        hf_path=args.hf_path)
except (FileNotFoundError, CheckpointError) as e:
    compute_cleanup()
    parser.exit(1, f"chat_eval: cannot load the {args.source} checkpoint: {e}\n")
model_tag, step = meta["model_tag"], meta["step"]
dtype, why = decide_compute_dtype(compute.device_type, args.dtype)
autocast = autocast_ctx(compute.device_type, dtype)
print0(f"{args.source} model {model_tag} step {step}: {model.num_params():,} parameters | compute dtype "
       f"{str(dtype).removeprefix('torch.')} ({why})")

results = {}
t0 = time.time()
with autocast:
    for name in task_names:
        r = evaluate_task(model, tokenizer, name, load_eval_task(name), batch_size=args.batch_size,
                          num_samples=args.num_samples, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k or None, max_items=args.eval_items,
                          fast=args.fast)
        results[name] = r
        print0(f"{name:<14} {r['correct']:>5}/{r['total']:<5} accuracy {r['accuracy']:.4f}  ({r['seconds']:.1f}s)",
               flush=True)

score = chatcore(results)
intervals = score_intervals(results)  # 95%: Wilson per task, a seeded bootstrap for ChatCORE
print0(f"\n{'task':<14} {'accuracy % [95% interval] items':<32} {'baseline':>9} {'centred':>9}")
for name, r in results.items():
    shown = fmt_estimate(r["accuracy"], r["interval"], r["total"])
    print0(f"{name:<14} {shown:<32} {r['baseline']:>9.4f} {r['centered']:>+9.4f}")
partial = "" if len(results) == len(TASKS) else f" (over {len(results)} of {len(TASKS)} tasks)"
if "ChatCORE" in intervals:
    core_interval = intervals["ChatCORE"]
    shown = fmt_estimate(score, (core_interval["low"], core_interval["high"]), core_interval["n"], percent=False)
else:  # a task with no items: no interval
    shown = f"{score:.4f}"
print0(f"ChatCORE{partial}: {shown}   total time {time.time() - t0:.1f}s")
metrics = {**{name: r["accuracy"] for name, r in results.items()}, "ChatCORE": score}

if compute.master:
    path = save_results("chat_eval", name=f"chat_eval_{args.source}_{model_tag}_{step:06d}", config=vars(args),
                        metrics=metrics, source=args.source, model_tag=model_tag, step=step,
                        extra={"tasks": results, "intervals": intervals, "world_size": compute.world_size})
    print0(f"wrote {path}")
print0(json.dumps(metrics))  # the last line: the metrics as JSON
compute_cleanup(together=True)
