"""
Bits per byte of a base-model checkpoint on the train and validation splits, and greedy samples
from a few fixed prompts.

    python -m scripts.base_loss                                   # the largest base model, latest step
    python -m scripts.base_loss --model-tag d4 --step 200 --eval-tokens 262144 --device-batch-size 8
    torchrun --nproc_per_node=8 -m scripts.base_loss -- --model-tag d20   # the same bpb, on 8 ranks

The rows are packed as the run was trained (--packing to override; see nanochat/dataloader.py) at the
model's training sequence length; --dtype auto as the training stages decide it (nanochat.common). The last line is one JSON object with train_bpb and val_bpb; the
same numbers and the samples go to get_base_dir()/results/base_loss_<tag>_<step>.json (nanochat.runlog).
"""

import argparse
import json
import sys

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import autocast_ctx, compute_cleanup, compute_init, decide_compute_dtype, get_dist_info, print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, load_eval_batches, tokenizing_distributed_data_loader
from nanochat.engine import Engine
from nanochat.flags import add_compute_flags, add_eval_tokens_flag, add_reply_flags, renamed
from nanochat.loss_eval import evaluate_bpb
from nanochat.runlog import save_results
from nanochat.tokenizer import get_token_bytes

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "My favorite color is", "2 + 2 ="]

parser = argparse.ArgumentParser(description="Bits per byte of a base checkpoint on train and val, plus samples.")
add_compute_flags(parser)
parser.add_argument("--model-tag", default=None, help="run folder under base_checkpoints (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass on each device")
add_eval_tokens_flag(parser, default_help="the run's own, 20 x its --total-batch-tokens; per split")
renamed(parser, "--split-tokens", "--eval-tokens")
parser.add_argument("--packing", choices=PACKINGS, default=None, help="row packing (default: the run's own)")
add_reply_flags(parser, max_new_tokens=24, temperature=0.0, top_k=0)
args = parser.parse_args()
if args.device_batch_size < 1 or (args.eval_tokens is not None and args.eval_tokens < 1):
    parser.error("--device-batch-size must be >= 1 and --eval-tokens >= 1 (or omitted)")

compute = compute_init(args.device_type)
device, master = compute.device, compute.master
try:
    dtype, why = decide_compute_dtype(device.type, args.dtype)
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step)
    token_bytes = get_token_bytes(device)
except (FileNotFoundError, ValueError, CheckpointError) as e:
    compute_cleanup()
    sys.exit(f"base_loss: error: {e}")
autocast = autocast_ctx(device.type, dtype)
run_config = meta.get("user_config", {})
packing = args.packing or run_config.get("packing", DEFAULT_PACKING)
T = model.config.sequence_len
_, _, _, world_size = get_dist_info()
eval_tokens = args.eval_tokens
if eval_tokens is None:  # the run's own (named --total-batch-size before the flags were renamed)
    eval_tokens = 20 * run_config.get("total_batch_tokens", run_config.get("total_batch_size", args.device_batch_size * T * world_size))
steps = max(1, eval_tokens // (args.device_batch_size * T * world_size))
print0(f"base model {meta['model_tag']} step {meta['step']} | sequence length {T} | packing {packing} | "
       f"{steps} step(s) of {args.device_batch_size} x {T} x {world_size} rank(s) per split | compute dtype "
       f"{str(dtype).removeprefix('torch.')} ({why})")

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
if master and args.max_new_tokens > 0:
    engine = Engine(model, tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, prepend="<|bos|>")
        with autocast:
            out, _ = engine.generate_batch(ids, num_samples=1, max_tokens=args.max_new_tokens,
                                           temperature=args.temperature, top_k=args.top_k or None)
        samples.append(prompt + tokenizer.decode(out[0][len(ids):]))
        print0(repr(samples[-1]))
if master:
    save_results("base_loss", model_tag=meta["model_tag"], step=meta["step"], config=vars(args), metrics=results,
                 extra=dict(samples=samples))
print0(json.dumps(dict(step=meta["step"], packing=packing, **results)))
compute_cleanup(together=True)
