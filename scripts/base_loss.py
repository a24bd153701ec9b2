"""
Bits per byte of a base-model checkpoint on the train and validation splits, and greedy samples
from a few fixed prompts.

    python -m scripts.base_loss                                   # the largest base model, latest step
    python -m scripts.base_loss --model-tag d4 --step 200 --split-tokens 262144 --device-batch-size 8
    torchrun --nproc_per_node=8 -m scripts.base_loss -- --model-tag d20   # the same bpb, on 8 ranks

The rows are packed as the run was trained (--packing to override; see nanochat/dataloader.py) at the
model's training sequence length. The last line is one JSON object with train_bpb and val_bpb.
"""

import argparse
import json
import sys
from contextlib import nullcontext

import torch

from nanochat.checkpoint_manager import load_model
from nanochat.common import compute_cleanup, compute_init, get_dist_info, print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, tokenizing_distributed_data_loader
from nanochat.engine import Engine
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import get_token_bytes

PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "If yesterday was Friday, then tomorrow will be",
           "The opposite of hot is", "The planets of the solar system are:", "My favorite color is", "2 + 2 ="]

parser = argparse.ArgumentParser(description="Bits per byte of a base checkpoint on train and val, plus samples.")
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--model-tag", default=None, help="run folder under base_checkpoints (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward pass on each device")
parser.add_argument("--split-tokens", type=int, default=20 * 524288, help="tokens evaluated per split, all ranks together")
parser.add_argument("--packing", choices=PACKINGS, default=None, help="row packing (default: the run's own)")
parser.add_argument("--max-tokens", type=int, default=24, help="tokens generated per sample (0: no samples)")
args = parser.parse_args()
if args.device_batch_size < 1 or args.split_tokens < 1:
    parser.error("--device-batch-size and --split-tokens must be >= 1")

compute = compute_init(args.device_type)
device, master = compute.device, compute.master
autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
try:
    model, tokenizer, meta = load_model("base", device, phase="eval", model_tag=args.model_tag, step=args.step)
    token_bytes = get_token_bytes(device)
except (FileNotFoundError, ValueError) as e:
    sys.exit(f"base_loss: error: {e}")
packing = args.packing or meta.get("user_config", {}).get("packing", DEFAULT_PACKING)
T = model.config.sequence_len
_, _, _, world_size = get_dist_info()
steps = max(1, args.split_tokens // (args.device_batch_size * T * world_size))
print0(f"checkpoint step {meta['step']} | sequence length {T} | packing {packing} | "
       f"{steps} step(s) of {args.device_batch_size} x {T} x {world_size} rank(s) per split")

results = {}
for split in ("train", "val"):
    loader = tokenizing_distributed_data_loader(tokenizer, args.device_batch_size, T, split, packing=packing, device=device)
    with autocast:
        results[f"{split}_bpb"] = evaluate_bpb(model, loader, steps, token_bytes)
    print0(f"{split} bpb: {results[f'{split}_bpb']:.6f}")

if master and args.max_tokens > 0:
    engine = Engine(model, tokenizer)
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt, prepend="<|bos|>")
        with autocast:
            samples, _ = engine.generate_batch(ids, num_samples=1, max_tokens=args.max_tokens, temperature=0.0)
        print0(repr(tokenizer.decode(samples[0][1:])))
print0(json.dumps(dict(step=meta["step"], packing=packing, **results)))
compute_cleanup()
