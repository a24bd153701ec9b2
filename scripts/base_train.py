"""
Pretrain the base model on the parquet shards (nanochat.dataset) with the project's tokenizer.

One dial, --depth, derives the rest: width = depth * aspect ratio (rounded up to whole heads of
--head-dim), heads, the horizon (tokens = --target-param-data-ratio x parameters, unless
--num-iterations, --target-flops or --max-train-minutes say otherwise) and the AdamW learning-rate
scaling (GPT.setup_optimizers: x (width/768)^-0.5). Every derived value is printed at start-up.

    python -m scripts.base_train --depth=20                              # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.base_train -- --depth=20      # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.base_train --depth=4 --max-seq-len=512 \
        --device-batch-size=8 --total-batch-tokens=8192 --num-iterations=200 --eval-every=50 \
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
matmuls measure faster than fp32 (nanochat.common.decide_compute_dtype), else fp32; a resumed run
keeps the dtype it started in. MFU is measured against the peak of the dtype used. torch.compile by
default on CUDA only. The shared mechanics (flags, set-up, resume, SIGTERM, the save and eval
cadences, the progress line, summary and results) are nanochat/stage.py's.

Validation: --eval-tokens (default 20 optimizer steps' worth) are tokenized once at start-up and
scored at every evaluation; an evaluation reads each validation token at most once, and says so
when the split holds fewer tokens than asked.
"""

import argparse
import math
import sys
import time

import torch

from nanochat.common import print0
from nanochat.dataloader import DEFAULT_PACKING, PACKINGS, load_eval_batches, tokenizing_distributed_data_loader_with_state
from nanochat.dataset import split_files
from nanochat.flags import add_batch_flags, add_compile_flag, add_compute_flags, add_eval_tokens_flag, \
    add_optimizer_flags, add_run_flags
from nanochat.gpt import GPT
from nanochat.loss_eval import evaluate_bpb
from nanochat.plan import PLAN_VOCAB_SIZE, base_config, meta_model
from nanochat.stage import Stage, due
from nanochat.tokenizer import get_token_bytes, get_tokenizer

SAMPLE_PROMPTS = ["The capital of France is", "The chemical symbol of gold is", "The opposite of hot is",
                  "If yesterday was Friday, then tomorrow will be", "The planets of the solar system are:"]

parser = argparse.ArgumentParser(description="Pretrain the base model.")
add_compute_flags(parser)
add_compile_flag(parser)
# model
parser.add_argument("--depth", type=int, default=20, help="number of transformer blocks: the one dial")
parser.add_argument("--aspect-ratio", type=int, default=64, help="width = depth * aspect ratio (then rounded up to whole heads)")
parser.add_argument("--head-dim", type=int, default=128, help="attention head dimension")
parser.add_argument("--max-seq-len", type=int, default=2048, help="context length T of training rows")
parser.add_argument("--model-tag", default=None, help="run folder name under base_checkpoints (default: d<depth>)")
# horizon: the first of --num-iterations and these that is set wins
add_run_flags(parser, horizon="from the options below", eval_every=250, seed_help="seed of the weight initialisation")
parser.add_argument("--target-flops", type=float, default=None, help="training FLOPs budget")
parser.add_argument("--max-train-minutes", type=float, default=None,
                    help="wall-clock budget of training, evaluation excluded; the lr schedule follows elapsed time")
parser.add_argument("--target-param-data-ratio", type=float, default=20.0, help="training tokens per parameter (Chinchilla: 20)")
# optimization and data
add_batch_flags(parser, "tokens", device_batch_size=32, total=524288)
add_optimizer_flags(parser, warmdown_ratio=0.2)
parser.add_argument("--packing", choices=PACKINGS, default=DEFAULT_PACKING, help="how documents fill rows (see nanochat/dataloader.py)")
# evaluation
add_eval_tokens_flag(parser)
parser.add_argument("--eval-at-minutes", default="", help="also evaluate when training time passes these minutes, e.g. '2,5,10'")
parser.add_argument("--sample-every", type=int, default=2000, help="print samples of fixed prompts every N steps (-1: off)")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags and the inputs before any process group exists (every rank exits the same way)

run = Stage("base_train", parser, args)
if args.depth < 1:
    parser.error(f"--depth must be >= 1, got {args.depth}")
if args.aspect_ratio < 1 or args.head_dim < 2 or args.head_dim % 2:
    parser.error(f"--aspect-ratio must be >= 1 and --head-dim even and >= 2, got {args.aspect_ratio}, {args.head_dim}")
if args.max_seq_len < 1:
    parser.error(f"--max-seq-len must be >= 1, got {args.max_seq_len}")
rows = 1 if args.device_batch_size == "auto" else args.device_batch_size  # auto: fitted below, a divisor of the rows
rows_per_rank = rows * run.check_total_batch("tokens", rows * args.max_seq_len * run.world_size,
                                             f"--device-batch-size {rows} x --max-seq-len {args.max_seq_len}")
if args.num_iterations is None and not args.target_flops and not args.max_train_minutes and args.target_param_data_ratio <= 0:
    parser.error("no horizon: set --num-iterations, --target-flops, --max-train-minutes or --target-param-data-ratio")
if args.eval_tokens is not None and args.eval_tokens < 1:
    parser.error(f"--eval-tokens must be positive (omit it for 20 x --total-batch-tokens), got {args.eval_tokens}")
try:
    eval_at_minutes = sorted(float(m) for m in args.eval_at_minutes.split(",") if m.strip())
except ValueError:
    parser.error(f"--eval-at-minutes must be a comma-separated list of numbers, got {args.eval_at_minutes!r}")
try:
    split_files("train")  # a missing folder, no shards or a single shard: a clear message, no traceback
    tokenizer = get_tokenizer()
    token_bytes_cpu = get_token_bytes("cpu")
except (FileNotFoundError, ValueError) as e:
    if not args.dry_run:
        sys.exit(f"base_train: error: {e}")
    tokenizer = token_bytes_cpu = None  # a plan needs no data: tok_train's default vocab
    print0(f"base_train: dry run without the data or tokenizer ({e}); planning at vocab {PLAN_VOCAB_SIZE:,}")

# -----------------------------------------------------------------------------
# compute, model, horizon

run.init_compute()
device = run.device
use_compile = run.device_type == "cuda" if args.compile is None else args.compile
token_bytes = token_bytes_cpu.to(device) if token_bytes_cpu is not None else None
model_tag = args.model_tag or f"d{args.depth}"
run.set_run_dir("base", model_tag)
dtype, autocast = run.pick_dtype()

config = base_config(args.depth, tokenizer.get_vocab_size() if tokenizer else PLAN_VOCAB_SIZE, args.max_seq_len,
                     args.aspect_ratio, args.head_dim)  # width rounded up to whole heads
n_embd, n_head = config.n_embd, config.n_head
model = meta_model(config) if args.dry_run and args.gpu else GPT(config).to(device)  # a plan of another machine: shapes only
model.init_weights()
orig_model = model  # uncompiled: for state dicts and sampling (variable shapes)
num_params = model.num_params()
flops_per_token = model.estimate_flops()
total_batch = args.total_batch_tokens

time_budget_s = None
if args.num_iterations is not None:
    num_iterations, horizon = args.num_iterations, "--num-iterations"
elif args.target_flops:
    num_iterations = round(args.target_flops / (flops_per_token * total_batch))
    horizon = f"--target-flops {args.target_flops:.3g}"
elif args.max_train_minutes:
    num_iterations, time_budget_s = None, args.max_train_minutes * 60
    horizon = f"--max-train-minutes {args.max_train_minutes:g} (steps unknown in advance)"
else:
    num_iterations = round(args.target_param_data_ratio * num_params / total_batch)
    horizon = f"--target-param-data-ratio {args.target_param_data_ratio:g}"
if num_iterations is not None and num_iterations < 1:
    run.fail(f"the horizon ({horizon}) gives {num_iterations} steps; raise it")
eval_tokens = 20 * total_batch if args.eval_tokens is None else args.eval_tokens

print0(f"depth {args.depth} -> width {n_embd} (depth x {args.aspect_ratio} = {args.depth * args.aspect_ratio}, "
       f"rounded up to whole heads), {n_head} head(s) of dim {args.head_dim}, kv heads {n_head}")
print0(f"vocab {config.vocab_size:,} | sequence length {args.max_seq_len} | parameters {num_params:,} | "
       f"FLOPs per token {flops_per_token:.4g} | AdamW lr scale (width/768)^-0.5 = {(n_embd / 768) ** -0.5:.4f}")
if num_iterations is not None:
    total_tokens = num_iterations * total_batch
    print0(f"horizon ({horizon}): {num_iterations:,} steps, {total_tokens:,} tokens "
           f"({total_tokens / num_params:.2f} tokens/param), {flops_per_token * total_tokens:.4g} FLOPs")
else:
    print0(f"horizon ({horizon})")
optimizers = run.setup_optimizers(orig_model)
if use_compile:
    model = torch.compile(model, dynamic=False)
run.fit_device_batch(args.max_seq_len, rows_per_rank, model)  # resolves --device-batch-size auto
grad_accum_steps = rows_per_rank // args.device_batch_size
tokens_per_micro_step = args.device_batch_size * args.max_seq_len * run.world_size
print0(f"batch: {total_batch:,} tokens/step = {args.device_batch_size} rows x {args.max_seq_len} tokens x "
       f"{run.world_size} rank(s) x {grad_accum_steps} micro-step(s) | compile {use_compile} | packing {args.packing}")

# -----------------------------------------------------------------------------
# resume, loop state, data

loader_state = run.start(dict(val_bpb=None, min_val_bpb=None, evals_done_at_min=[]), total_batch, flops_per_token,
                         num_iterations, time_budget_s)
try:  # a resume position of other data or of another number of micro-batches per step: refused
    train_loader = tokenizing_distributed_data_loader_with_state(
        tokenizer, args.device_batch_size, args.max_seq_len, "train", packing=args.packing, device=device,
        resume_state=loader_state, micro_steps=grad_accum_steps)
    val_batches, _ = load_eval_batches(tokenizer, args.device_batch_size, args.max_seq_len, "val",
                                       max(1, eval_tokens // tokens_per_micro_step), packing=args.packing, device=device)
except ValueError as e:
    run.fail(e)
print0(f"validation: {len(val_batches) * tokens_per_micro_step:,} tokens per evaluation (asked for {eval_tokens:,})")


def evaluate(step, last):
    """Val bpb (at the cadence, at the end and when training time passes --eval-at-minutes) and samples."""
    loop, minutes = run.loop, run.meter.train_time / 60
    due_by_time = [m for m in eval_at_minutes if minutes >= m and m not in loop["evals_done_at_min"]]
    if due(step, args.eval_every, last) or due_by_time:
        t0 = time.perf_counter()
        with autocast:
            loop["val_bpb"] = evaluate_bpb(model, val_batches, len(val_batches), token_bytes)
        loop["min_val_bpb"] = min(loop["min_val_bpb"] or math.inf, loop["val_bpb"])
        loop["evals_done_at_min"] += due_by_time
        run.record_eval(f"val bpb {loop['val_bpb']:.6f} | train time {minutes:.2f} min | eval {time.perf_counter() - t0:.1f}s",
                        val_bpb=loop["val_bpb"], train_time=run.meter.train_time)
    if run.master and args.sample_every > 0 and (last or step % args.sample_every == 0) and step > 0:
        from nanochat.engine import Engine
        engine = Engine(orig_model, tokenizer)
        for prompt in SAMPLE_PROMPTS:
            prompt_ids = tokenizer.encode(prompt, prepend="<|bos|>")
            with autocast:
                results, _ = engine.generate_batch(prompt_ids, num_samples=1, max_tokens=16, temperature=0.0)
            print0(repr(tokenizer.decode(results[0][1:])))


# -----------------------------------------------------------------------------
# the loop: one optimizer step is grad_accum_steps forward/backward passes, then both optimizers

for step in run.steps(evaluate):
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    for _ in range(grad_accum_steps):
        inputs, targets, run.data_state = next(train_loader)
        with autocast:
            loss = model(inputs, targets)
        loss_sum += loss.detach()
        (loss / grad_accum_steps).backward()
    lrm = run.optimizer_step()
    run.end_step(loss_sum / grad_accum_steps, t0, lrm=lrm)  # the mean over micro-steps and ranks

# -----------------------------------------------------------------------------
# summary

loop = run.loop
run.finish(dict(final_val_bpb=loop["val_bpb"], min_val_bpb=loop["min_val_bpb"]),
           metrics=dict(val_bpb=loop["val_bpb"], min_val_bpb=loop["min_val_bpb"], num_params=num_params))
