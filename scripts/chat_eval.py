"""
Evaluate a chat checkpoint (mid, sft or rl) on the chat tasks and report ChatCORE.

    python -m scripts.chat_eval -i sft                                  # all tasks, one process
    python -m scripts.chat_eval -i sft -a "ARC-Easy|GSM8K" --max-problems 50
    torchrun --nproc_per_node=8 -m scripts.chat_eval -- -i sft          # items spread over 8 GPUs
    python -m scripts.chat_eval -i sft --device-type cpu --max-problems 20   # a quick CPU check

Categorical tasks (ARC, MMLU) compare the logits of the answer letters; generative tasks (GSM8K,
HumanEval, SpellingBee) sample through the engine (greedy unless --temperature > 0; pass@k with
--num-samples). Prints each task's accuracy and ChatCORE (see nanochat/task_eval.py) and writes a
JSON of the results into <base dir>/chat_eval/.
"""

import argparse
import json
import os
import time
from contextlib import nullcontext

import torch

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import atomic_write, compute_cleanup, compute_init, get_base_dir, print0
from nanochat.task_eval import BASELINES, centered, chatcore, evaluate_task

parser = argparse.ArgumentParser(description="Evaluate a chat model on ARC, MMLU, GSM8K, HumanEval, SpellingBee.")
# checkpoint
parser.add_argument("-i", "--source", required=True, choices=["mid", "sft", "rl"], help="which stage's checkpoint")
parser.add_argument("--model-tag", default=None, help="model tag (default: the largest model of that stage)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
# tasks
parser.add_argument("-a", "--tasks", default="|".join(BASELINES),
                    help="tasks separated by '|' (default: all of %(default)s)")
parser.add_argument("--max-problems", type=int, default=None, help="cap the items of each task (fast run)")
# generation
parser.add_argument("--num-samples", type=int, default=1, help="samples per generative item (pass@k)")
parser.add_argument("--max-new-tokens", type=int, default=512, help="max tokens generated per sample")
parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0 = greedy)")
parser.add_argument("--top-k", type=int, default=50, help="top-k sampling (0 = none)")
parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (categorical tasks)")
# compute
parser.add_argument("--device-type", default="", choices=["", "cuda", "mps", "cpu"], help="device (default: autodetect)")
parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="autocast dtype on CUDA")
args = parser.parse_args()

task_names = [t.strip() for t in args.tasks.split("|") if t.strip()]
unknown = [t for t in task_names if t not in BASELINES]
if unknown or not task_names:
    parser.error(f"unknown task(s) {unknown or args.tasks!r}; choose from {'|'.join(BASELINES)}")
for flag in ("num_samples", "max_new_tokens", "batch_size"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
if args.max_problems is not None and args.max_problems < 1:
    parser.error(f"--max-problems must be at least 1, got {args.max_problems}")
if args.temperature < 0:
    parser.error(f"--temperature must be >= 0, got {args.temperature}")

compute = compute_init(args.device_type)
try:
    model, tokenizer, meta = load_model(args.source, compute.device, phase="eval", model_tag=args.model_tag, step=args.step)
except (FileNotFoundError, CheckpointError) as e:
    parser.exit(1, f"chat_eval: cannot load the {args.source} checkpoint: {e}\n")
autocast = (torch.amp.autocast(device_type="cuda", dtype=getattr(torch, args.dtype))
            if compute.device_type == "cuda" else nullcontext())

results = {}
t0 = time.time()
with autocast:
    for name in task_names:
        r = evaluate_task(model, tokenizer, name, batch_size=args.batch_size, num_samples=args.num_samples,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k or None, max_problems=args.max_problems)
        results[name] = r
        print0(f"{name:<14} {r['correct']:>5}/{r['total']:<5} accuracy {100 * r['accuracy']:6.2f}%  ({r['seconds']:.1f}s)")

print0(f"\n{'task':<14} {'accuracy':>9} {'centred':>9}")
for name, r in results.items():
    print0(f"{name:<14} {100 * r['accuracy']:8.2f}% {100 * centered(r['accuracy'], BASELINES[name]):8.2f}%")
score = chatcore({name: r["accuracy"] for name, r in results.items()})
partial = "" if len(results) == len(BASELINES) else f" (over {len(results)} of {len(BASELINES)} tasks)"
print0(f"ChatCORE{partial}: {score:.4f}   total time {time.time() - t0:.1f}s")

if compute.master:
    out_dir = os.path.join(get_base_dir(), "chat_eval")
    os.makedirs(out_dir, exist_ok=True)
    step = meta.get("step", "latest")
    path = os.path.join(out_dir, f"{args.source}_{args.model_tag or 'default'}_{step}.json")
    atomic_write(path, lambda f: json.dump({"args": vars(args), "results": results, "chatcore": score}, f, indent=2))
    print0(f"wrote {path}")
compute_cleanup()
