"""
Pretrain the base model on the parquet shards (nanochat.dataset) with the project's tokenizer.

One dial, --depth, derives the rest: width = depth * aspect ratio (rounded up to whole heads of
--head-dim), heads, the horizon (tokens = --target-param-data-ratio x parameters, unless
--num-iterations, --target-flops or --max-train-minutes say otherwise) and the AdamW learning-rate
scaling (GPT.setup_optimizers: x (width/768)^-0.5). Every derived value is printed at start-up.

    python -m scripts.base_train --depth=20                              # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.base_train -- --depth=20      # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.base_train --depth=4 --max-seq-len=512 \
        --device-batch-size=8 --total-batch-size=8192 --num-iterations=200 --eval-every=50 \
        --eval-tokens=65536                                              # a small CPU run
    torchrun --nproc_per_node=2 -m scripts.base_train -- --depth=4 ...   # 2 CPU processes (gloo)
Under torchrun put "--" before the script's flags: torchrun would otherwise take --run=... as an
abbreviation of its own --run-path and stop with "ambiguous option".

The run folder is get_base_dir()/base_checkpoints/<model-tag> (default d<depth>): checkpoints
(nanochat.checkpoint_manager: model, each rank's optimizer state, meta with the model config,
vars(args), the step, every rank's loader state and the loop state), log.jsonl (one JSON record per
step and per evaluation) and summary.json (final and minimum val bpb, training time without
evaluation, total FLOPs, MFU). --resume continues from the latest checkpoint exactly: the resumed
steps see the same batches and give the same losses as an uninterrupted run. SIGTERM (a preempted
instance) finishes the current step, saves a checkpoint and exits with status 0.

The model is never wrapped in DDP: the optimizers (nanochat.optim) average gradients across ranks.
On CUDA the forward runs under bf16 autocast and, by default, torch.compile; elsewhere in fp32.
"""

import argparse
import importlib.util
import json
import math
import os
import resource
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import torch
import torch.distributed as dist

from nanochat.checkpoint_manager import latest_step, load_checkpoint, save_checkpoint
from nanochat.common import DummyWandb, atomic_write, compute_cleanup, compute_init, get_base_dir, get_dist_info, print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, tokenizing_distributed_data_loader, \
    tokenizing_distributed_data_loader_with_state
from nanochat.dataset import split_files
from nanochat.gpt import GPT, GPTConfig
from nanochat.plot import plot_training_log
from nanochat.loss_eval import evaluate_bpb
from nanochat.tokenizer import get_token_bytes, get_tokenizer

# Dense bf16 tensor-core peak FLOP/s from the vendors' datasheets. Matched in order against
# torch.cuda.get_device_name(), so the more specific names come first.
GPU_BF16_PEAK_FLOPS = [
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),   # SXM
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165.2e12),
]
SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "The opposite of hot is",
                  "If yesterday was Friday, then tomorrow will be", "The planets of the solar system are:"]

parser = argparse.ArgumentParser(description="Pretrain the base model.")
# runtime
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the model (default: on CUDA only)")
parser.add_argument("--run", default="dummy", help="wandb run name; 'dummy' (default) disables wandb")
parser.add_argument("--seed", type=int, default=42, help="seed of the weight initialisation")
# model
parser.add_argument("--depth", type=int, default=20, help="number of transformer blocks: the one dial")
parser.add_argument("--aspect-ratio", type=int, default=64, help="width = depth * aspect ratio (then rounded up to whole heads)")
parser.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
parser.add_argument("--max-seq-len", type=int, default=2048, help="context length T of training rows")
# horizon: the first of these that is set wins
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: derive from the options below)")
parser.add_argument("--target-flops", type=float, default=-1.0, help="training FLOPs budget (-1: off)")
parser.add_argument("--max-train-minutes", type=float, default=-1.0,
                    help="wall-clock budget of training, evaluation excluded; the lr schedule follows elapsed time (-1: off)")
parser.add_argument("--target-param-data-ratio", type=float, default=20.0, help="training tokens per parameter (Chinchilla: 20)")
# optimization
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward/backward on each device")
parser.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step, all ranks and micro-steps together")
parser.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW lr of the embedding (before width scaling)")
parser.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW lr of the head (before width scaling)")
parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon lr of the block matrices")
parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of both optimizers")
parser.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of the horizon spent warming the lr up from 0")
parser.add_argument("--warmdown-ratio", type=float, default=0.2, help="fraction of the horizon at the end spent decaying the lr")
parser.add_argument("--final-lr-frac", type=float, default=0.0, help="lr multiplier reached at the end of the warm-down")
parser.add_argument("--packing", choices=PACKINGS, default=DEFAULT_PACKING, help="how documents fill rows (see nanochat/dataloader.py)")
# evaluation
parser.add_argument("--eval-every", type=int, default=250, help="evaluate val bpb every N steps (and at the end; -1: only at the end)")
parser.add_argument("--eval-at-minutes", default="", help="also evaluate when training time passes these minutes, e.g. '2,5,10'")
parser.add_argument("--eval-tokens", type=int, default=20 * 524288, help="val tokens per evaluation, all ranks together")
parser.add_argument("--sample-every", type=int, default=2000, help="print samples of fixed prompts every N steps (-1: off)")
# output
parser.add_argument("--model-tag", default="", help="run folder name under base_checkpoints (default: d<depth>)")
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps and at the end (-1: only at the end; 0: never)")
parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run folder")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags and the inputs before any process group exists (every rank exits the same way)

_, rank, _, world_size = get_dist_info()
tokens_per_micro_step = args.device_batch_size * args.max_seq_len * world_size
if args.depth < 1:
    parser.error(f"--depth must be >= 1, got {args.depth}")
if args.aspect_ratio < 1 or args.head_dim < 2 or args.head_dim % 2:
    parser.error(f"--aspect-ratio must be >= 1 and --head-dim even and >= 2, got {args.aspect_ratio}, {args.head_dim}")
if args.max_seq_len < 1 or args.device_batch_size < 1:
    parser.error(f"--max-seq-len and --device-batch-size must be >= 1, got {args.max_seq_len}, {args.device_batch_size}")
if args.total_batch_size < 1 or args.total_batch_size % tokens_per_micro_step:
    parser.error(f"--total-batch-size={args.total_batch_size} is not a multiple of the tokens of one micro-step on all "
                 f"ranks: --device-batch-size {args.device_batch_size} x --max-seq-len {args.max_seq_len} x "
                 f"{world_size} rank(s) = {tokens_per_micro_step}. Pick a multiple of {tokens_per_micro_step}.")
if not 0 <= args.warmup_ratio + args.warmdown_ratio <= 1 or min(args.warmup_ratio, args.warmdown_ratio) < 0:
    parser.error("--warmup-ratio and --warmdown-ratio must be >= 0 and sum to at most 1")
if args.num_iterations <= 0 and args.target_flops <= 0 and args.max_train_minutes <= 0 and args.target_param_data_ratio <= 0:
    parser.error("no horizon: set --num-iterations, --target-flops, --max-train-minutes or --target-param-data-ratio")
try:
    eval_at_minutes = sorted(float(m) for m in args.eval_at_minutes.split(",") if m.strip())
except ValueError:
    parser.error(f"--eval-at-minutes must be a comma-separated list of numbers, got {args.eval_at_minutes!r}")
if args.run != "dummy" and importlib.util.find_spec("wandb") is None:
    parser.error(f"--run={args.run} asks for wandb logging, but wandb is not installed: "
                 f"`uv pip install wandb` (and `wandb login`), or pass --run=dummy")
try:
    split_files("train")  # a missing folder, no shards or a single shard: a clear message, no traceback
    tokenizer = get_tokenizer()
    token_bytes_cpu = get_token_bytes("cpu")
except (FileNotFoundError, ValueError) as e:
    sys.exit(f"base_train: error: {e}")

# -----------------------------------------------------------------------------
# compute, model, horizon

compute = compute_init(args.device_type, seed=args.seed)
device, device_type, master = compute.device, compute.device_type, compute.master
use_compile = device_type == "cuda" if args.compile is None else args.compile
autocast = torch.amp.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else nullcontext()
token_bytes = token_bytes_cpu.to(device)

n_embd = -(-args.depth * args.aspect_ratio // args.head_dim) * args.head_dim  # round up to whole heads
n_head = n_embd // args.head_dim
config = GPTConfig(sequence_len=args.max_seq_len, vocab_size=tokenizer.get_vocab_size(), n_layer=args.depth,
                   n_head=n_head, n_kv_head=n_head, n_embd=n_embd)
model = GPT(config).to(device)
model.init_weights()
orig_model = model  # uncompiled: for state dicts and sampling (variable shapes)
num_params = model.num_params()
flops_per_token = model.estimate_flops()
grad_accum_steps = args.total_batch_size // tokens_per_micro_step

time_budget_s = None
if args.num_iterations > 0:
    num_iterations, horizon = args.num_iterations, "--num-iterations"
elif args.target_flops > 0:
    num_iterations = round(args.target_flops / (flops_per_token * args.total_batch_size))
    horizon = f"--target-flops {args.target_flops:.3g}"
elif args.max_train_minutes > 0:
    num_iterations, time_budget_s = None, args.max_train_minutes * 60
    horizon = f"--max-train-minutes {args.max_train_minutes:g} (steps unknown in advance)"
else:
    num_iterations = round(args.target_param_data_ratio * num_params / args.total_batch_size)
    horizon = f"--target-param-data-ratio {args.target_param_data_ratio:g}"
if num_iterations is not None and num_iterations < 1:
    sys.exit(f"base_train: error: the horizon ({horizon}) gives {num_iterations} steps; raise it")

if device_type == "cuda":
    gpu_name = torch.cuda.get_device_name(device)
    peak_flops = next((flops for name, flops in GPU_BF16_PEAK_FLOPS if name in gpu_name), None)
    peak_what = f"{gpu_name} bf16 peak" if peak_flops else f"{gpu_name}: not in the peak table, no MFU"
elif device_type == "cpu":
    # No datasheet for an arbitrary CPU: the best fp32 matmul rate of this process's threads.
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    peak_flops, t_end = 0.0, time.perf_counter() + 0.5
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        peak_flops = max(peak_flops, 2 * 1024 ** 3 / (time.perf_counter() - t0))
    peak_what = f"measured fp32 matmul rate of {torch.get_num_threads()} CPU thread(s)"
else:
    peak_flops, peak_what = None, f"{device_type}: no peak known, no MFU"

model_tag = args.model_tag or f"d{args.depth}"
run_dir = os.path.join(get_base_dir(), "base_checkpoints", model_tag)
print0(f"depth {args.depth} -> width {n_embd} (depth x {args.aspect_ratio} = {args.depth * args.aspect_ratio}, "
       f"rounded up to whole heads), {n_head} head(s) of dim {args.head_dim}, kv heads {n_head}")
print0(f"vocab {config.vocab_size:,} | sequence length {args.max_seq_len} | parameters {num_params:,} | "
       f"FLOPs per token {flops_per_token:.4g}")
print0(f"AdamW lr scale (width/768)^-0.5 = {(n_embd / 768) ** -0.5:.4f} | matrix lr {args.matrix_lr} | "
       f"embedding lr {args.embedding_lr} | unembedding lr {args.unembedding_lr}")
print0(f"batch: {args.total_batch_size:,} tokens/step = {args.device_batch_size} rows x {args.max_seq_len} tokens x "
       f"{world_size} rank(s) x {grad_accum_steps} micro-step(s)")
if num_iterations is not None:
    total_tokens = num_iterations * args.total_batch_size
    print0(f"horizon ({horizon}): {num_iterations:,} steps, {total_tokens:,} tokens "
           f"({total_tokens / num_params:.2f} tokens/param), {flops_per_token * total_tokens:.4g} FLOPs")
else:
    print0(f"horizon ({horizon})")
print0(f"MFU against {peak_what}: {peak_flops or float('nan'):.4g} FLOP/s | compile {use_compile} | "
       f"packing {args.packing} | run folder {run_dir}")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                    matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
adamw, muon = optimizers

# -----------------------------------------------------------------------------
# resume, loop state, data

step, loader_state = 0, None
loop = dict(smooth_loss=0.0, train_time=0.0, total_tokens=0, val_bpb=None, min_val_bpb=None, evals_done_at_min=[])
if args.resume:
    try:
        start = latest_step(run_dir)
        model_state, optim_states, meta = load_checkpoint(run_dir, start, device=device, load_optimizer=True, rank=rank)
    except (FileNotFoundError, RuntimeError) as e:  # no run folder / no complete step / a corrupt file
        sys.exit(f"base_train: error: --resume: {e}")
    if meta["model_config"] != asdict(config):
        sys.exit(f"base_train: error: the checkpoint in {run_dir} has model config {meta['model_config']}, "
                 f"but these flags give {asdict(config)}; resume with the run's own flags")
    if len(meta["loader_states"]) != world_size:
        sys.exit(f"base_train: error: the checkpoint was saved by {len(meta['loader_states'])} rank(s); "
                 f"resume it with the same number of ranks (now {world_size})")
    orig_model.load_state_dict(model_state)
    for opt, state in zip(optimizers, optim_states):
        opt.load_state_dict(state)
    step, loader_state, loop = meta["step"], meta["loader_states"][rank], meta["loop_state"]
    del model_state, optim_states
    print0(f"resumed from {run_dir} at step {step}")
if use_compile:
    model = torch.compile(model, dynamic=False)

train_loader = tokenizing_distributed_data_loader_with_state(
    tokenizer, args.device_batch_size, args.max_seq_len, "train", packing=args.packing, device=device,
    resume_state=loader_state)
eval_steps = max(1, args.eval_tokens // tokens_per_micro_step)

log_path = os.path.join(run_dir, "log.jsonl")
if master:
    os.makedirs(run_dir, exist_ok=True)
    # Keep the records of the steps before `step`; a resumed run writes the later ones again.
    kept = []
    if args.resume and os.path.exists(log_path):
        with open(log_path) as f:  # a line cut short by a crash has no newline: dropped
            kept = [line for line in f if line.endswith("\n") and json.loads(line)["step"] < step]
    with open(log_path, "w") as f:
        f.writelines(kept)

wandb_run = DummyWandb()
if args.run != "dummy" and master:
    import wandb
    wandb_run = wandb.init(project="nanochat", name=args.run, config=vars(args))


def record(rec):
    """Append one record to log.jsonl and wandb (rank 0)."""
    if master:
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        wandb_run.log(rec)


def lr_multiplier(progress):
    """progress in [0, 1] -> linear warm-up to 1, flat, linear warm-down to --final-lr-frac."""
    if progress < args.warmup_ratio:
        return progress / args.warmup_ratio
    if progress <= 1 - args.warmdown_ratio:
        return 1.0
    frac = (1 - progress) / args.warmdown_ratio
    return frac + (1 - frac) * args.final_lr_frac


def muon_momentum(step):
    """Muon momentum warm-up 0.85 -> 0.95 over the first 300 steps."""
    frac = min(step / 300, 1.0)
    return (1 - frac) * 0.85 + frac * 0.95


stop_requested = False


def on_sigterm(signum, frame):
    global stop_requested
    stop_requested = True
    print(f"rank {rank}: SIGTERM received; saving a checkpoint after this step", flush=True)


signal.signal(signal.SIGTERM, on_sigterm)


def save(step):
    # Each rank's loader is somewhere else in its own row groups: gather all of them into the meta.
    states = [None] * world_size
    if dist.is_initialized():
        dist.all_gather_object(states, loader_state)
    else:
        states = [loader_state]
    meta = dict(step=step, model_config=asdict(config), user_config=vars(args), loader_states=states,
                loop_state=loop, world_size=world_size)
    save_checkpoint(run_dir, step, orig_model.state_dict(), [opt.state_dict() for opt in optimizers], meta, rank=rank)
    print0(f"saved checkpoint of step {step} to {run_dir}")


# -----------------------------------------------------------------------------
# the loop: step counts the optimizer steps done so far

stopping, step_times = False, []
while True:
    if stopping:  # SIGTERM on some rank during the last step: every rank saves and leaves together
        save(step)
        print0(f"stopped on SIGTERM after step {step}; continue with the same flags plus --resume")
        break
    if time_budget_s is not None:
        last_step = loop["train_time"] >= time_budget_s
    else:
        last_step = step >= num_iterations
    minutes = loop["train_time"] / 60
    due_by_time = [m for m in eval_at_minutes if minutes >= m and m not in loop["evals_done_at_min"]]
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0) or due_by_time:
        t0 = time.perf_counter()
        val_loader = tokenizing_distributed_data_loader(tokenizer, args.device_batch_size, args.max_seq_len, "val",
                                                        packing=args.packing, device=device)
        with autocast:
            loop["val_bpb"] = evaluate_bpb(model, val_loader, eval_steps, token_bytes)
        loop["min_val_bpb"] = min(loop["min_val_bpb"] or math.inf, loop["val_bpb"])
        loop["evals_done_at_min"] += due_by_time
        print0(f"step {step:05d} | val bpb {loop['val_bpb']:.6f} | train time {minutes:.2f} min "
               f"| eval {time.perf_counter() - t0:.1f}s")
        record(dict(step=step, val_bpb=loop["val_bpb"], train_time=loop["train_time"]))
    if master and args.sample_every > 0 and (last_step or step % args.sample_every == 0) and step > 0:
        from nanochat.engine import Engine
        engine = Engine(orig_model, tokenizer)
        for prompt in SAMPLE_PROMPTS:
            prompt_ids = tokenizer.encode(prompt, prepend="<|bos|>")
            with autocast:
                results, _ = engine.generate_batch(prompt_ids, num_samples=1, max_tokens=16, temperature=0.0)
            print0(repr(tokenizer.decode(results[0][1:])))
    if (last_step and args.save_every != 0) or (args.save_every > 0 and step % args.save_every == 0 and step > 0):
        save(step)
    if last_step:
        break

    # one optimizer step: grad_accum_steps forward/backward passes, then both optimizers
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    for _ in range(grad_accum_steps):
        inputs, targets, loader_state = next(train_loader)
        with autocast:
            loss = model(inputs, targets)
        loss_sum += loss.detach()
        (loss / grad_accum_steps).backward()
    if time_budget_s is not None:
        last_dt = step_times[-1] if step_times else 0.0
        progress = min((loop["train_time"] + last_dt) / time_budget_s, 1.0)
    else:
        progress = (step + 1) / num_iterations
    lrm = lr_multiplier(progress)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm
    for group in muon.param_groups:
        group["momentum"] = muon_momentum(step)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    # The logged loss is the mean over micro-steps and ranks; the same all-reduce agrees on SIGTERM.
    stats = torch.stack([loss_sum / grad_accum_steps, torch.tensor(float(stop_requested), device=device)])
    if dist.is_initialized():
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
    train_loss, stopping = stats[0].item() / world_size, stats[1].item() > 0
    if device_type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    step_times.append(dt)
    loop["train_time"] += dt
    loop["total_tokens"] += args.total_batch_size

    beta = 0.9  # EMA of the loss, debiased for the first steps
    loop["smooth_loss"] = beta * loop["smooth_loss"] + (1 - beta) * train_loss
    smooth = loop["smooth_loss"] / (1 - beta ** (step + 1))
    tok_per_s = args.total_batch_size / dt
    mfu = flops_per_token * tok_per_s / (peak_flops * world_size) if peak_flops else None
    if device_type == "cuda":
        mem_gib = torch.cuda.max_memory_allocated(device) / 2 ** 30
    else:
        mem_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # peak RSS (KiB on Linux)
    typical_dt = sorted(step_times)[len(step_times) // 2]
    if time_budget_s is not None:
        eta_s, of = time_budget_s - loop["train_time"], f"{loop['train_time'] / 60:.2f}/{args.max_train_minutes:g} min"
    else:
        eta_s, of = (num_iterations - step - 1) * typical_dt, f"{step + 1}/{num_iterations} ({100 * (step + 1) / num_iterations:.1f}%)"
    mfu_str = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
    print0(f"step {step:05d} {of} | loss {smooth:.6f} | lrm {lrm:.3f} | dt {1000 * dt:.0f} ms | tok/s {tok_per_s:,.0f} "
           f"| mfu {mfu_str} | mem {mem_gib:.2f} GiB | eta {max(eta_s, 0) / 60:.1f} min", flush=True)
    record(dict(step=step, loss=train_loss, smooth_loss=smooth, lrm=lrm, dt=dt, tok_per_s=tok_per_s, mfu=mfu,
                train_time=loop["train_time"]))
    step += 1

# -----------------------------------------------------------------------------
# summary

total_flops = flops_per_token * loop["total_tokens"]
train_time = loop["train_time"]
summary = dict(step=step, final_val_bpb=loop["val_bpb"], min_val_bpb=loop["min_val_bpb"], training_time_s=train_time,
               total_tokens=loop["total_tokens"], total_flops=total_flops,
               tok_per_s=loop["total_tokens"] / train_time if train_time else None,
               mfu=total_flops / (train_time * peak_flops * world_size) if peak_flops and train_time else None,
               peak_flops_per_device=peak_flops, stopped_on_sigterm=stopping)
if master and not stopping:
    mfu_str = f"{100 * summary['mfu']:.2f}%" if summary["mfu"] is not None else "n/a"
    print0(f"final val bpb {summary['final_val_bpb']:.6f} | min val bpb {summary['min_val_bpb']:.6f} | "
           f"training time {train_time / 60:.2f} min (evaluation excluded) | total FLOPs {total_flops:.4g} | "
           f"MFU {mfu_str}")
    atomic_write(os.path.join(run_dir, "summary.json"), lambda f: json.dump(summary, f, indent=2))
    if plot_training_log(log_path, os.path.join(run_dir, "loss.svg")):
        print0(f"loss curves: {os.path.join(run_dir, 'loss.svg')}")
wandb_run.finish()
compute_cleanup()
