"""
Bits per byte of a base-model checkpoint on the train and validation splits, and greedy samples
from a few fixed prompts.

    python -m scripts.base_loss                                   # the largest base model, latest step
    python -m scripts.base_loss --model-tag d4 --step 200 --split-tokens 262144 --device-batch-size 8
    torchrun --nproc_per_node=8 -m scripts.base_loss -- --model-tag d20   # the same bpb, on 8 ranks

The rows are packed as the run was trained (--packing to override; see nanochat/dataloader.py) at the
model's training sequence length. The last line is one JSON object with train_bpb and val_bpb; the
same numbers and the samples go to get_base_dir()/results/base_loss_<tag>_<step>.json (nanochat.runlog).
"""

import argparse
import json
import os
import sys

from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, find_largest_model, load_model
from nanochat.common import autocast_ctx, compute_cleanup, compute_init, get_base_dir, get_dist_info, \
    pick_compute_dtype, print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, load_eval_batches, tokenizing_distributed_data_loader
from nanochat.engine import Engine
from nanochat.loss_eval import evaluate_bpb
from nanochat.runlog import save_results
from nanochat.tokenizer import get_token_bytes

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "My favorite color is", "2 + 2 ="]

parser = argparse.ArgumentParser(description="Bits per byte of a base checkpoint on train and val, plus samples.")
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--model-tag", default=None, help="run folder under base_checkpoints (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass on each device")
parser.add_argument("--split-tokens", type=int, default=-1,
                    help="tokens evaluated per split, all ranks together (-1: the run's own, 20 x its --total-batch-size); "
                         "val tokens are read at most once")
parser.add_argument("--packing", choices=PACKINGS, default=None, help="row packing (default: the run's own)")
parser.add_argument("--max-tokens", type=int, default=24, help="tokens generated per sample (0: no samples)")
args = parser.parse_args()
if args.device_batch_size < 1 or args.split_tokens == 0 or args.split_tokens < -1:
    parser.error("--device-batch-size must be >= 1 and --split-tokens >= 1 (or -1)")

compute = compute_init(args.device_type)
device, master = compute.device, compute.master
autocast = autocast_ctx(device.type, pick_compute_dtype(device.type))
try:
    model_tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), SOURCE_DIRS["base"]))
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=model_tag, step=args.step)
    token_bytes = get_token_bytes(device)
except (FileNotFoundError, ValueError, CheckpointError) as e:
    sys.exit(f"base_loss: error: {e}")
packing = args.packing or meta.get("user_config", {}).get("packing", DEFAULT_PACKING)
T = model.config.sequence_len
_, _, _, world_size = get_dist_info()
split_tokens = args.split_tokens
if split_tokens == -1:
    split_tokens = 20 * meta.get("user_config", {}).get("total_batch_size", args.device_batch_size * T * world_size)
steps = max(1, split_tokens // (args.device_batch_size * T * world_size))
print0(f"checkpoint step {meta['step']} | sequence length {T} | packing {packing} | "
       f"{steps} step(s) of {args.device_batch_size} x {T} x {world_size} rank(s) per split")

results = {}
for split in ("train", "val"):
    if split == "val":  # one pass at most, as base_train evaluates it
        batches, _ = load_eval_batches(tokenizer, args.device_batch_size, T, split, steps, packing=packing, device=device)
        loader, n = batches, len(batches)
    else:
        loader, n = tokenizing_distributed_data_loader(tokenizer, args.device_batch_size, T, split, packing=packing,
                                                       device=device), steps
    with autocast:
        results[f"{split}_bpb"] = evaluate_bpb(model, loader, n, token_bytes)
    print0(f"{split} bpb: {results[f'{split}_bpb']:.6f}")

samples = []
if master and args.max_tokens > 0:
    engine = Engine(model, tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, prepend="<|bos|>")
        with autocast:
            out, _ = engine.generate_batch(ids, num_samples=1, max_tokens=args.max_tokens, temperature=0.0)
        samples.append(prompt + tokenizer.decode(out[0][len(ids):]))
        print0(repr(samples[-1]))
if master:
    save_results("base_loss", model_tag=model_tag, step=meta["step"], config=vars(args), metrics=results,
                 extra=dict(samples=samples))
print0(json.dumps(dict(step=meta["step"], packing=packing, **results)))
compute_cleanup()
