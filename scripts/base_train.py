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
Compute dtype (--dtype auto): bf16 autocast on CUDA; on CPU bf16 only where this machine's bf16
matmuls measure faster than fp32 (nanochat.common.pick_compute_dtype), else fp32; MFU is measured
against the peak of the dtype used. torch.compile by default on CUDA only.

Validation: --eval-tokens (default 20 optimizer steps' worth) are tokenized once at start-up and
scored at every evaluation; an evaluation reads each validation token at most once, and says so
when the split holds fewer tokens than asked.
"""

import argparse
import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict

import torch

from nanochat.checkpoint_manager import CheckpointError, load_training_state, save_training_state
from nanochat.common import COMPUTE_DTYPES, autocast_ctx, compute_cleanup, compute_init, get_base_dir, \
    get_dist_info, get_peak_flops, pick_compute_dtype, print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, load_eval_batches, tokenizing_distributed_data_loader_with_state
from nanochat.dataset import split_files
from nanochat.gpt import GPT, GPTConfig
from nanochat.loss_eval import evaluate_bpb
from nanochat.runlog import ProgressMeter, RunLog, StopFlag, finish_run, save_results
from nanochat.schedules import lr_multiplier, set_lr, set_momentum
from nanochat.tokenizer import get_token_bytes, get_tokenizer

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "The opposite of hot is",
                  "If yesterday was Friday, then tomorrow will be", "The planets of the solar system are:"]

parser = argparse.ArgumentParser(description="Pretrain the base model.")
# runtime
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--dtype", default="auto", choices=COMPUTE_DTYPES,
                    help="compute dtype: auto = bf16 on CUDA, and on CPU where bf16 matmuls measure faster than fp32")
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
parser.add_argument("--eval-tokens", type=int, default=-1,
                    help="val tokens per evaluation, all ranks together, each read at most once (-1: 20 x --total-batch-size)")
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
if args.eval_tokens == 0 or args.eval_tokens < -1:
    parser.error(f"--eval-tokens must be positive (or -1 for 20 x --total-batch-size), got {args.eval_tokens}")
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
dtype = pick_compute_dtype(device_type, args.dtype)
autocast = autocast_ctx(device_type, dtype)
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
peak_flops, peak_what = get_peak_flops(device, dtype)
eval_tokens = 20 * args.total_batch_size if args.eval_tokens == -1 else args.eval_tokens

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
print0(f"compute dtype {str(dtype).removeprefix('torch.')} | MFU against {peak_what}: {peak_flops or float('nan'):.4g} "
       f"FLOP/s | compile {use_compile} | packing {args.packing} | run folder {run_dir}")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr, embedding_lr=args.embedding_lr,
                                    matrix_lr=args.matrix_lr, weight_decay=args.weight_decay)
adamw, muon = optimizers
if device_type == "cpu" and dtype == torch.bfloat16:
    for group in muon.param_groups:  # Newton-Schulz in the dtype the matmuls are fast in
        group["ns_dtype"] = "bfloat16"

# -----------------------------------------------------------------------------
# resume, loop state, data

meter = ProgressMeter(args.total_batch_size, flops_per_token, peak_flops, world_size, num_iterations, time_budget_s)
step, loader_state = 0, None
loop = dict(val_bpb=None, min_val_bpb=None, evals_done_at_min=[])
if args.resume:
    try:
        step, loader_state, meta = load_training_state(run_dir, orig_model, optimizers, device, asdict(config))
    except (FileNotFoundError, CheckpointError) as e:  # nothing to resume / another run / a corrupt file
        sys.exit(f"base_train: error: --resume: {e}")
    loop = meta["loop_state"]
    meter.load_state_dict(loop.pop("meter"))
    print0(f"resumed from {run_dir} at step {step}")
if use_compile:
    model = torch.compile(model, dynamic=False)

train_loader = tokenizing_distributed_data_loader_with_state(
    tokenizer, args.device_batch_size, args.max_seq_len, "train", packing=args.packing, device=device,
    resume_state=loader_state)
try:
    val_batches, _ = load_eval_batches(tokenizer, args.device_batch_size, args.max_seq_len, "val",
                                       max(1, eval_tokens // tokens_per_micro_step), packing=args.packing, device=device)
except ValueError as e:
    sys.exit(f"base_train: error: {e}")
print0(f"validation: {len(val_batches) * tokens_per_micro_step:,} tokens per evaluation (asked for {eval_tokens:,})")

wandb_run = None
if args.run != "dummy" and master:
    import wandb
    wandb_run = wandb.init(project="nanochat", name=args.run, config=vars(args))
log = RunLog(run_dir, master, resume_step=step if args.resume else None, wandb_run=wandb_run)
stop = StopFlag()


def save(step):
    meta = dict(model_config=asdict(config), user_config=vars(args), loop_state=dict(loop, meter=meter.state_dict()))
    save_training_state(run_dir, step, orig_model, optimizers, meta, loader_state)
    print0(f"saved checkpoint of step {step} to {run_dir}")


# -----------------------------------------------------------------------------
# the loop: step counts the optimizer steps done so far

stopping = False
while True:
    if stopping:  # SIGTERM on some rank during the last step: every rank saves and leaves together
        save(step)
        print0(f"stopped on SIGTERM after step {step}; continue with the same flags plus --resume")
        break
    if time_budget_s is not None:
        last_step = meter.train_time >= time_budget_s
    else:
        last_step = step >= num_iterations
    minutes = meter.train_time / 60
    due_by_time = [m for m in eval_at_minutes if minutes >= m and m not in loop["evals_done_at_min"]]
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0) or due_by_time:
        t0 = time.perf_counter()
        with autocast:
            loop["val_bpb"] = evaluate_bpb(model, val_batches, len(val_batches), token_bytes)
        loop["min_val_bpb"] = min(loop["min_val_bpb"] or math.inf, loop["val_bpb"])
        loop["evals_done_at_min"] += due_by_time
        print0(f"step {step:05d} | val bpb {loop['val_bpb']:.6f} | train time {minutes:.2f} min "
               f"| eval {time.perf_counter() - t0:.1f}s")
        log.record(dict(step=step, val_bpb=loop["val_bpb"], train_time=meter.train_time))
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
    # the fraction of the horizon done before this step (nanochat/schedules.py)
    progress = meter.train_time / time_budget_s if time_budget_s is not None else step / num_iterations
    lrm = lr_multiplier(progress, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
    set_lr(optimizers, lrm)
    set_momentum(muon, step)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    # the logged loss is the mean over micro-steps and ranks; the same all-reduce agrees on SIGTERM
    train_loss, stopping = stop.reduce(loss_sum / grad_accum_steps, device)
    if device_type == "cuda":
        torch.cuda.synchronize()
    line, rec = meter.update(step, train_loss, time.perf_counter() - t0, lrm=lrm, device=device)
    print0(line, flush=True)
    log.record(rec)
    step += 1

# -----------------------------------------------------------------------------
# summary

summary = dict(step=step, final_val_bpb=loop["val_bpb"], min_val_bpb=loop["min_val_bpb"], **meter.summary(),
               compute_dtype=str(dtype).removeprefix("torch."), stopped_on_sigterm=stopping)
if master and not stopping:
    mfu_str = f"{100 * summary['mfu']:.2f}%" if summary["mfu"] is not None else "n/a"
    print0(f"final val bpb {summary['final_val_bpb']:.6f} | min val bpb {summary['min_val_bpb']:.6f} | "
           f"training time {summary['training_time_s'] / 60:.2f} min (evaluation excluded) | "
           f"total FLOPs {summary['total_flops']:.4g} | MFU {mfu_str}")
    artifacts = finish_run(run_dir, summary, master)
    save_results("base_train", name=f"base_train_{model_tag}", model_tag=model_tag, step=step, config=vars(args),
                 metrics=dict(val_bpb=summary["final_val_bpb"], min_val_bpb=summary["min_val_bpb"],
                              num_params=num_params, tokens=summary["total_tokens"], mfu=summary["mfu"],
                              tok_per_s=summary["tok_per_s"], training_time_s=summary["training_time_s"],
                              compute_dtype=summary["compute_dtype"]),
                 artifacts=artifacts)
if wandb_run is not None:
    wandb_run.finish()
compute_cleanup()
