"""
Mid-train a base model on conversations: the chat format and its special tokens, python tool use,
multiple-choice answering and the model's own identity, before SFT.

    python -m scripts.mid_train                                             # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.mid_train -- --model-tag=d20     # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.mid_train --model-tag=d4 --device-batch-size=8 \
        --total-batch-size=4096 --num-iterations=100 --eval-every=50          # a small CPU run
    torchrun --nproc_per_node=2 -m scripts.mid_train -- --model-tag=d4 ...   # 2 CPU processes (gloo)
Under torchrun put "--" before the script's flags (torchrun would take --run=... for its --run-path).

Source: the base checkpoint get_base_dir()/base_checkpoints/<model-tag> (default: the largest d<N>),
step --step (default: the latest). Mixture (tasks/, shuffled together): general chat (SmolTalk
schema: the mirror's chat/), GSM8K train with its calculator calls as python tool calls, ARC-Easy
and ARC-Challenge train, MMLU auxiliary_train when it can be had (the offline mirror has none: a
line says so and the run goes on without it), the identity conversations (tasks/identity.py, from
tasks/identity.json) and the two spelling tasks. Conversations are packed into rows of
--max-seq-len + 1 tokens (nanochat/chat_data.py, BOS-aligned best fit) and the loss is the mean
over the step's assistant tokens only (user turns and tool outputs are masked out).

Horizon: --num-iterations, or by default one epoch of the mixture, estimated from the rendered
length of an evenly spaced sample of 1000 conversations (printed at start-up).

The run folder is get_base_dir()/mid_checkpoints/<model-tag>: checkpoints (model, each rank's
optimizer state, meta with the model config, vars(args), the source, every rank's loader position
and the loop state), log.jsonl, summary.json and loss.svg; the final metrics go to
get_base_dir()/results/mid_train_<model-tag>.json. --resume continues from the run's latest
checkpoint exactly (same batches, same losses); SIGTERM finishes the step, saves and exits 0.
Validation: bits per byte (and the mean loss) on the assistant tokens of a held-out mixture (chat
test split, GSM8K test, ARC validation, other identity and spelling items), each read at most once.
"""

import argparse
import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict

import torch

from nanochat.chat_data import count_targets, evaluate_chat_loss, load_val_batches, mid_data_loader_with_state, \
    render_row
from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, find_largest_model, load_model, \
    load_training_state, save_training_state
from nanochat.common import COMPUTE_DTYPES, autocast_ctx, compute_cleanup, compute_init, get_base_dir, \
    get_dist_info, get_peak_flops, pick_compute_dtype, print0
from nanochat.runlog import ProgressMeter, RunLog, StopFlag, finish_run, save_results
from nanochat.schedules import lr_multiplier, set_lr, set_momentum
from nanochat.tokenizer import get_token_bytes

parser = argparse.ArgumentParser(description="Mid-train a base model on conversations.")
# runtime
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--dtype", default="auto", choices=COMPUTE_DTYPES,
                    help="compute dtype: auto = bf16 on CUDA, and on CPU where bf16 matmuls measure faster than fp32")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the model (default: on CUDA only)")
parser.add_argument("--run", default="dummy", help="wandb run name; 'dummy' (default) disables wandb")
parser.add_argument("--seed", type=int, default=42, help="seed of the mixture's order")
# source
parser.add_argument("--model-tag", default="", help="base model tag to start from, also the run folder name (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=-1, help="step of the base checkpoint (-1: the latest)")
# data
parser.add_argument("--max-seq-len", type=int, default=-1, help="row length T (-1: the base model's sequence length)")
parser.add_argument("--identity-size", type=int, default=1000, help="identity conversations in the mixture (0: none)")
parser.add_argument("--spelling-size", type=int, default=10000, help="items of each spelling task in the mixture (0: none)")
# horizon
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: about one epoch of the mixture)")
# optimization
parser.add_argument("--device-batch-size", type=int, default=32, help="rows per forward/backward on each device")
parser.add_argument("--total-batch-size", type=int, default=524288, help="tokens per optimizer step, all ranks and micro-steps together")
parser.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW lr of the embedding (before width scaling)")
parser.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW lr of the head (before width scaling)")
parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon lr of the block matrices")
parser.add_argument("--init-lr-frac", type=float, default=1.0, help="every lr above is multiplied by this")
parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of both optimizers")
parser.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of the horizon spent warming the lr up from 0")
parser.add_argument("--warmdown-ratio", type=float, default=0.2, help="fraction of the horizon at the end spent decaying the lr")
parser.add_argument("--final-lr-frac", type=float, default=0.0, help="lr multiplier reached at the end of the warm-down")
# evaluation
parser.add_argument("--eval-every", type=int, default=150, help="evaluate val bpb every N steps (and at the end; -1: only at the end)")
parser.add_argument("--eval-tokens", type=int, default=-1,
                    help="val tokens per evaluation, all ranks together, each read at most once (-1: 20 x --total-batch-size)")
# output
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps and at the end (-1: only at the end; 0: never)")
parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run folder")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags before any process group exists (every rank exits the same way)

_, rank, _, world_size = get_dist_info()
for flag in ("device_batch_size", "total_batch_size"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
if args.max_seq_len == 0 or args.max_seq_len < -1:
    parser.error(f"--max-seq-len must be >= 1 (or -1 for the base model's), got {args.max_seq_len}")
if args.num_iterations == 0 or args.num_iterations < -1:
    parser.error(f"--num-iterations must be >= 1 (or -1 for one epoch), got {args.num_iterations}")
if args.identity_size < 0 or args.spelling_size < 0:
    parser.error("--identity-size and --spelling-size must be >= 0")
if not 0 <= args.warmup_ratio + args.warmdown_ratio <= 1 or min(args.warmup_ratio, args.warmdown_ratio) < 0:
    parser.error("--warmup-ratio and --warmdown-ratio must be >= 0 and sum to at most 1")
if args.eval_tokens == 0 or args.eval_tokens < -1:
    parser.error(f"--eval-tokens must be positive (or -1 for 20 x --total-batch-size), got {args.eval_tokens}")
if args.run != "dummy" and importlib.util.find_spec("wandb") is None:
    parser.error(f"--run={args.run} asks for wandb logging, but wandb is not installed: "
                 f"`uv pip install wandb` (and `wandb login`), or pass --run=dummy")

# -----------------------------------------------------------------------------
# compute, source model, data

compute = compute_init(args.device_type, seed=args.seed)
device, device_type, master = compute.device, compute.device_type, compute.master
try:
    model_tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), SOURCE_DIRS["base"]))
    model, tokenizer, source_meta = load_model("base", device, "train", model_tag, None if args.step < 0 else args.step)
    token_bytes = get_token_bytes(device)
except (FileNotFoundError, CheckpointError, ValueError) as e:
    sys.exit(f"mid_train: error: cannot load the base model: {e}")
config = model.config
T = config.sequence_len if args.max_seq_len == -1 else args.max_seq_len
if T > config.sequence_len:
    sys.exit(f"mid_train: error: --max-seq-len={T} is longer than the base model's sequence length "
             f"{config.sequence_len}; use at most that")
tokens_per_micro_step = args.device_batch_size * T * world_size
if args.total_batch_size % tokens_per_micro_step:
    sys.exit(f"mid_train: error: --total-batch-size={args.total_batch_size} is not a multiple of the tokens of one "
             f"micro-step on all ranks: --device-batch-size {args.device_batch_size} x --max-seq-len {T} x "
             f"{world_size} rank(s) = {tokens_per_micro_step}. Pick a multiple of {tokens_per_micro_step}.")
grad_accum_steps = args.total_batch_size // tokens_per_micro_step
use_compile = device_type == "cuda" if args.compile is None else args.compile
dtype = pick_compute_dtype(device_type, args.dtype)
autocast = autocast_ctx(device_type, dtype)
orig_model = model  # uncompiled: for state dicts

try:
    from tasks.arc import ARC
    from tasks.common import TaskMixture
    from tasks.gsm8k import GSM8K
    from tasks.identity import Identity
    from tasks.mmlu import MMLU
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SimpleSpelling, SpellingBee

    train_parts = {"chat": SmolTalk("train"), "GSM8K": GSM8K("main", "train"),
                   "ARC-Easy": ARC("ARC-Easy", "train"), "ARC-Challenge": ARC("ARC-Challenge", "train")}
    try:
        train_parts["MMLU auxiliary_train"] = MMLU("auxiliary_train", "train")
    except Exception as e:  # optional: absent offline, or the hub is unreachable; any failure means "without it"
        print0(f"MMLU auxiliary_train is not available, training without it: {str(e).splitlines()[0]}")
    val_parts = {"chat": SmolTalk("test"), "GSM8K": GSM8K("main", "test"),
                 "ARC-Easy": ARC("ARC-Easy", "validation"), "ARC-Challenge": ARC("ARC-Challenge", "validation")}
    if args.identity_size:
        train_parts["identity"] = Identity(size=args.identity_size, seed=args.seed)
        val_parts["identity"] = Identity(size=max(1, args.identity_size // 10), seed=args.seed + 1)
    if args.spelling_size:
        train_parts["SimpleSpelling"] = SimpleSpelling(size=args.spelling_size, split="train", seed=args.seed)
        train_parts["SpellingBee"] = SpellingBee(size=args.spelling_size, split="train", seed=args.seed)
        val_parts["SimpleSpelling"] = SimpleSpelling(size=max(1, args.spelling_size // 20), split="test", seed=args.seed)
        val_parts["SpellingBee"] = SpellingBee(size=max(1, args.spelling_size // 20), split="test", seed=args.seed)
except (FileNotFoundError, RuntimeError, ValueError) as e:  # a missing mirror file, no hub access, a bad spec
    sys.exit(f"mid_train: error: cannot load the mixture: {e}")
train_task = TaskMixture(list(train_parts.values()), seed=args.seed)
val_task = TaskMixture(list(val_parts.values()), seed=args.seed)

if args.num_iterations > 0:
    num_iterations, horizon = args.num_iterations, "--num-iterations"
else:
    # one epoch ~ conversations x their mean rendered length (cut to a row), from an evenly spaced sample
    n = len(train_task)
    sample = sorted({k * n // min(n, 1000) for k in range(min(n, 1000))})
    mean_len = sum(len(render_row(tokenizer, train_task[i], T + 1)[0]) for i in sample) / len(sample)
    num_iterations = max(1, round(n * mean_len / args.total_batch_size))
    horizon = f"one epoch: {n:,} conversations x ~{mean_len:.0f} tokens (mean of {len(sample)})"
num_params, flops_per_token = orig_model.num_params(), orig_model.estimate_flops()
peak_flops, peak_what = get_peak_flops(device, dtype)
eval_tokens = 20 * args.total_batch_size if args.eval_tokens == -1 else args.eval_tokens
run_dir = os.path.join(get_base_dir(), SOURCE_DIRS["mid"], model_tag)

print0(f"source: base model {model_tag} step {source_meta.get('step')} | {num_params:,} parameters | "
       f"row length {T} | FLOPs per token {flops_per_token:.4g}")
for name, task in train_parts.items():
    print0(f"  train {name:<22} {len(task):>8,} conversations")
print0(f"  train total {len(train_task):,} conversations | validation {len(val_task):,} conversations")
print0(f"batch: {args.total_batch_size:,} tokens/step = {args.device_batch_size} rows x {T} tokens x "
       f"{world_size} rank(s) x {grad_accum_steps} micro-step(s)")
print0(f"horizon ({horizon}): {num_iterations:,} steps, {num_iterations * args.total_batch_size:,} tokens")
print0(f"lr x {args.init_lr_frac:g}: matrix {args.matrix_lr} | embedding {args.embedding_lr} | unembedding "
       f"{args.unembedding_lr} | compute dtype {str(dtype).removeprefix('torch.')} | MFU against {peak_what}: "
       f"{peak_flops or float('nan'):.4g} FLOP/s | compile {use_compile} | run folder {run_dir}")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr * args.init_lr_frac,
                                    embedding_lr=args.embedding_lr * args.init_lr_frac,
                                    matrix_lr=args.matrix_lr * args.init_lr_frac, weight_decay=args.weight_decay)
adamw, muon = optimizers
if device_type == "cpu" and dtype == torch.bfloat16:
    for group in muon.param_groups:  # Newton-Schulz in the dtype the matmuls are fast in
        group["ns_dtype"] = "bfloat16"

# -----------------------------------------------------------------------------
# resume, loop state, data

meter = ProgressMeter(args.total_batch_size, flops_per_token, peak_flops, world_size, num_iterations)
step, loader_state = 0, None
loop = dict(val_bpb=None, val_loss=None, min_val_bpb=None)
if args.resume:
    try:
        step, loader_state, meta = load_training_state(run_dir, orig_model, optimizers, device, asdict(config))
    except (FileNotFoundError, CheckpointError) as e:  # nothing to resume / another run / a corrupt file
        sys.exit(f"mid_train: error: --resume: {e}")
    loop = meta["loop_state"]
    meter.load_state_dict(loop.pop("meter"))
    print0(f"resumed from {run_dir} at step {step}")
if use_compile:
    model = torch.compile(model, dynamic=False)

try:
    train_loader = mid_data_loader_with_state(tokenizer, train_task, args.device_batch_size, T, device=device,
                                              resume_state=loader_state, seed=args.seed)
    val_batches, _ = load_val_batches(tokenizer, val_task, args.device_batch_size, T,
                                      max(1, eval_tokens // tokens_per_micro_step), packed=True, device=device)
except ValueError as e:  # too little data for one batch, or a resume position of another mixture
    sys.exit(f"mid_train: error: {e}")
print0(f"validation: {len(val_batches) * tokens_per_micro_step:,} tokens per evaluation (asked for {eval_tokens:,})")

wandb_run = None
if args.run != "dummy" and master:
    import wandb
    wandb_run = wandb.init(project="nanochat", name=args.run, config=vars(args))
log = RunLog(run_dir, master, resume_step=step if args.resume else None, wandb_run=wandb_run)
stop = StopFlag()
source = dict(source="base", model_tag=model_tag, step=source_meta.get("step"))


def save(step):
    meta = dict(model_config=asdict(config), user_config=vars(args), source=source,
                loop_state=dict(loop, meter=meter.state_dict()))
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
    last_step = step >= num_iterations
    if last_step or (args.eval_every > 0 and step % args.eval_every == 0):
        t0 = time.perf_counter()
        with autocast:
            loop["val_loss"], loop["val_bpb"] = evaluate_chat_loss(model, val_batches, token_bytes)
        loop["min_val_bpb"] = min(loop["min_val_bpb"] or math.inf, loop["val_bpb"])
        print0(f"step {step:05d} | val bpb {loop['val_bpb']:.6f} | val loss {loop['val_loss']:.6f} "
               f"| eval {time.perf_counter() - t0:.1f}s")
        log.record(dict(step=step, val_bpb=loop["val_bpb"], val_loss=loop["val_loss"], train_time=meter.train_time))
    if (last_step and args.save_every != 0) or (args.save_every > 0 and step % args.save_every == 0 and step > 0):
        save(step)
    if last_step:
        break

    # one optimizer step. The loss is the mean over the step's trained (assistant) tokens on all ranks:
    # each micro-batch's summed loss over their count; x world_size because the optimizers average ranks.
    t0 = time.perf_counter()
    batches = [next(train_loader) for _ in range(grad_accum_steps)]
    loader_state = batches[-1][2]
    n_targets, _ = count_targets(batches, device)
    scale = world_size / max(n_targets, 1)  # a step with no trained token: zero loss, zero gradient
    loss_sum = torch.zeros((), device=device)
    for inputs, targets, _ in batches:
        with autocast:
            loss = model(inputs, targets, loss_reduction="sum")
        loss_sum += loss.detach()
        (loss * scale).backward()
    lrm = lr_multiplier(step / num_iterations, args.warmup_ratio, args.warmdown_ratio, args.final_lr_frac)
    set_lr(optimizers, lrm)
    set_momentum(muon, step)
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    # the mean over ranks of loss_sum * scale is the step's mean loss; the same all-reduce agrees on SIGTERM
    train_loss, stopping = stop.reduce(loss_sum * scale, device)
    if device_type == "cuda":
        torch.cuda.synchronize()
    line, rec = meter.update(step, train_loss, time.perf_counter() - t0, lrm=lrm, device=device, targets=n_targets,
                             epoch=loader_state["epoch"])
    print0(line, flush=True)
    log.record(rec)
    step += 1

# -----------------------------------------------------------------------------
# summary

summary = dict(step=step, final_val_bpb=loop["val_bpb"], final_val_loss=loop["val_loss"], min_val_bpb=loop["min_val_bpb"],
               **meter.summary(), compute_dtype=str(dtype).removeprefix("torch."), source=source,
               stopped_on_sigterm=stopping)
if master and not stopping:
    print0(f"final val bpb {summary['final_val_bpb']:.6f} | val loss {summary['final_val_loss']:.6f} | "
           f"training time {summary['training_time_s'] / 60:.2f} min (evaluation excluded)")
    artifacts = finish_run(run_dir, summary, master)
    save_results("mid_train", name=f"mid_train_{model_tag}", source="base", model_tag=model_tag, step=step,
                 config=vars(args),
                 metrics=dict(val_bpb=summary["final_val_bpb"], val_loss=summary["final_val_loss"],
                              min_val_bpb=summary["min_val_bpb"], tokens=summary["total_tokens"], mfu=summary["mfu"],
                              tok_per_s=summary["tok_per_s"], training_time_s=summary["training_time_s"],
                              compute_dtype=summary["compute_dtype"]),
                 artifacts=artifacts, extra=dict(source=source, mixture={k: len(v) for k, v in train_parts.items()}))
if wandb_run is not None:
    wandb_run.finish()
compute_cleanup()
