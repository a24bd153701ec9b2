"""
Supervised fine-tuning: one conversation per row, the loss on the assistant's tokens only, from
the mid-trained model (or the base model with --source base) to the chat model.

    python -m scripts.chat_sft                                              # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.chat_sft -- --model-tag=d20      # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.chat_sft --model-tag=d4 --device-batch-size=4 \
        --total-batch-size=16 --num-iterations=100 --eval-every=50           # a small CPU run
    torchrun --nproc_per_node=2 -m scripts.chat_sft -- --model-tag=d4 ...    # 2 CPU processes (gloo)
    python -m scripts.chat_sft --custom-json=my_bot.jsonl                   # add your own conversations
Under torchrun put "--" before the script's flags (torchrun would take --run=... for its --run-path).

Source: get_base_dir()/<mid_checkpoints | base_checkpoints>/<model-tag> (default: the largest d<N>),
step --step (default: the latest). Mixture (tasks/, shuffled together): ARC-Easy and ARC-Challenge
train, GSM8K train (python tool calls), --chat-size general chat conversations (evenly spaced over
the mirror's chat/ train split), the identity conversations (tasks/identity.py), the spelling tasks
and every --custom-json file (tasks/customjson.py; a malformed line is an error naming file and line).

Batches (nanochat/chat_data.py): --device-batch-size conversations per micro-batch, each cut to
--max-seq-len + 1 tokens and padded to the longest of the batch; --total-batch-size counts the
conversations of one optimizer step on all ranks. The loss is the mean over the step's assistant
tokens on all ranks (each micro-batch's summed loss over the step's count), so padding, uneven
conversation lengths and micro-batches with no trained token at all (a prompt longer than a row)
change nothing: such a micro-batch adds zero loss and zero gradient. Horizon: --num-iterations, or
by default one epoch of the mixture. Learning rates: the base rates x --init-lr-frac (0.02), decayed
linearly to 0 over the run (--warmdown-ratio 1).

Evaluation: every --eval-every steps the mean loss and bpb on the assistant tokens of a held-out
mixture (chat test split, GSM8K test, ARC validation, other identity and spelling items, each read
at most once); every --eval-metrics-every steps the accuracy on the first --eval-metrics-max-items
items of each --eval-tasks task (nanochat.task_eval.evaluate_task).

The run folder is get_base_dir()/chat_checkpoints/<model-tag>: checkpoints, log.jsonl, summary.json
and loss.svg; the final metrics go to get_base_dir()/results/chat_sft_<model-tag>.json. --resume
continues from the run's latest checkpoint exactly; SIGTERM finishes the step, saves and exits 0.
"""

import argparse
import importlib.util
import math
import os
import sys
import time
from dataclasses import asdict

import torch

from nanochat.chat_data import count_targets, evaluate_chat_loss, load_val_batches, sft_data_loader_with_state
from nanochat.checkpoint_manager import SOURCE_DIRS, CheckpointError, find_largest_model, load_model, \
    load_training_state, save_training_state
from nanochat.common import COMPUTE_DTYPES, autocast_ctx, compute_cleanup, compute_init, get_base_dir, \
    get_dist_info, get_peak_flops, pick_compute_dtype, print0
from nanochat.runlog import ProgressMeter, RunLog, StopFlag, finish_run, save_results
from nanochat.schedules import lr_multiplier, set_lr, set_momentum
from nanochat.task_eval import TASKS, evaluate_task, load_task
from nanochat.tokenizer import get_token_bytes

parser = argparse.ArgumentParser(description="Supervised fine-tuning on conversations.")
# runtime
parser.add_argument("--device-type", default="", help="cuda | mps | cpu (default: autodetect)")
parser.add_argument("--dtype", default="auto", choices=COMPUTE_DTYPES,
                    help="compute dtype: auto = bf16 on CUDA, and on CPU where bf16 matmuls measure faster than fp32")
parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                    help="torch.compile the model (default off: the padded width changes from batch to batch)")
parser.add_argument("--run", default="dummy", help="wandb run name; 'dummy' (default) disables wandb")
parser.add_argument("--seed", type=int, default=42, help="seed of the mixture's order")
# source
parser.add_argument("--source", default="mid", choices=("mid", "base"), help="the stage to start from")
parser.add_argument("--model-tag", default="", help="model tag to start from, also the run folder name (default: the largest d<N>)")
parser.add_argument("--step", type=int, default=-1, help="step of the source checkpoint (-1: the latest)")
# data
parser.add_argument("--max-seq-len", type=int, default=-1, help="longest row T; longer conversations are cut (-1: the model's sequence length)")
parser.add_argument("--chat-size", type=int, default=10000, help="general chat conversations in the mixture (-1: all; 0: none)")
parser.add_argument("--identity-size", type=int, default=1000, help="identity conversations in the mixture (0: none)")
parser.add_argument("--spelling-size", type=int, default=300, help="items of each spelling task in the mixture (0: none)")
parser.add_argument("--custom-json", action="append", default=[], metavar="FILE",
                    help="a JSONL file of your own conversations to add (see tasks/customjson.py); may be repeated")
# horizon
parser.add_argument("--num-iterations", type=int, default=-1, help="optimizer steps (-1: one epoch of the mixture)")
# optimization
parser.add_argument("--device-batch-size", type=int, default=4, help="conversations (rows) per forward/backward on each device")
parser.add_argument("--total-batch-size", type=int, default=32, help="conversations per optimizer step, all ranks and micro-steps together")
parser.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW lr of the embedding (before width scaling)")
parser.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW lr of the head (before width scaling)")
parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon lr of the block matrices")
parser.add_argument("--init-lr-frac", type=float, default=0.02, help="every lr above is multiplied by this")
parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of both optimizers")
parser.add_argument("--warmup-ratio", type=float, default=0.0, help="fraction of the horizon spent warming the lr up from 0")
parser.add_argument("--warmdown-ratio", type=float, default=1.0, help="fraction of the horizon at the end spent decaying the lr")
parser.add_argument("--final-lr-frac", type=float, default=0.0, help="lr multiplier reached at the end of the warm-down")
# evaluation
parser.add_argument("--eval-every", type=int, default=100, help="evaluate the val loss every N steps (and at the end; -1: only at the end)")
parser.add_argument("--eval-rows", type=int, default=-1,
                    help="val conversations per evaluation, all ranks together, each read at most once (-1: 20 x --total-batch-size)")
parser.add_argument("--eval-tasks", default="MMLU,ARC-Easy", help="comma-separated tasks of nanochat.task_eval to score ('' : none)")
parser.add_argument("--eval-metrics-every", type=int, default=200, help="score --eval-tasks every N steps (and at the end; -1: only at the end)")
parser.add_argument("--eval-metrics-max-items", type=int, default=1024, help="items per task and evaluation")
# output
parser.add_argument("--save-every", type=int, default=-1, help="checkpoint every N steps and at the end (-1: only at the end; 0: never)")
parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of the run folder")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags before any process group exists (every rank exits the same way)

_, rank, _, world_size = get_dist_info()
rows_per_micro_step = args.device_batch_size * world_size
for flag in ("device_batch_size", "total_batch_size", "eval_metrics_max_items"):
    if getattr(args, flag) < 1:
        parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
if args.total_batch_size % rows_per_micro_step:
    parser.error(f"--total-batch-size={args.total_batch_size} is not a multiple of the conversations of one micro-step "
                 f"on all ranks: --device-batch-size {args.device_batch_size} x {world_size} rank(s) = "
                 f"{rows_per_micro_step}. Pick a multiple of {rows_per_micro_step}.")
if args.max_seq_len == 0 or args.max_seq_len < -1:
    parser.error(f"--max-seq-len must be >= 1 (or -1 for the model's), got {args.max_seq_len}")
if args.num_iterations == 0 or args.num_iterations < -1:
    parser.error(f"--num-iterations must be >= 1 (or -1 for one epoch), got {args.num_iterations}")
if args.chat_size < -1 or args.identity_size < 0 or args.spelling_size < 0:
    parser.error("--chat-size must be >= -1, --identity-size and --spelling-size >= 0")
if not 0 <= args.warmup_ratio + args.warmdown_ratio <= 1 or min(args.warmup_ratio, args.warmdown_ratio) < 0:
    parser.error("--warmup-ratio and --warmdown-ratio must be >= 0 and sum to at most 1")
if args.eval_rows == 0 or args.eval_rows < -1:
    parser.error(f"--eval-rows must be positive (or -1 for 20 x --total-batch-size), got {args.eval_rows}")
eval_task_names = [name.strip() for name in args.eval_tasks.split(",") if name.strip()]
for name in eval_task_names:
    if name not in TASKS:
        parser.error(f"--eval-tasks: unknown task {name!r}; choose from {', '.join(TASKS)}")
if args.run != "dummy" and importlib.util.find_spec("wandb") is None:
    parser.error(f"--run={args.run} asks for wandb logging, but wandb is not installed: "
                 f"`uv pip install wandb` (and `wandb login`), or pass --run=dummy")

# -----------------------------------------------------------------------------
# compute, source model, data

compute = compute_init(args.device_type, seed=args.seed)
device, device_type, master = compute.device, compute.device_type, compute.master
try:
    model_tag = args.model_tag or find_largest_model(os.path.join(get_base_dir(), SOURCE_DIRS[args.source]))
    model, tokenizer, source_meta = load_model(args.source, device, "train", model_tag,
                                               None if args.step < 0 else args.step)
    token_bytes = get_token_bytes(device)
except (FileNotFoundError, CheckpointError, ValueError) as e:
    sys.exit(f"chat_sft: error: cannot load the {args.source} model: {e}")
config = model.config
T = config.sequence_len if args.max_seq_len == -1 else args.max_seq_len
if T > config.sequence_len:
    sys.exit(f"chat_sft: error: --max-seq-len={T} is longer than the model's sequence length {config.sequence_len}; "
             f"use at most that")
grad_accum_steps = args.total_batch_size // rows_per_micro_step
dtype = pick_compute_dtype(device_type, args.dtype)
autocast = autocast_ctx(device_type, dtype)
orig_model = model  # uncompiled: for state dicts and the task evaluations (variable shapes)

try:
    from tasks.arc import ARC
    from tasks.common import TaskMixture
    from tasks.customjson import CustomJSON
    from tasks.gsm8k import GSM8K
    from tasks.identity import Identity
    from tasks.smoltalk import SmolTalk
    from tasks.spellingbee import SimpleSpelling, SpellingBee

    train_parts = {"ARC-Easy": ARC("ARC-Easy", "train"), "ARC-Challenge": ARC("ARC-Challenge", "train"),
                   "GSM8K": GSM8K("main", "train")}
    val_parts = {"ARC-Easy": ARC("ARC-Easy", "validation"), "ARC-Challenge": ARC("ARC-Challenge", "validation"),
                 "GSM8K": GSM8K("main", "test")}
    if args.chat_size:
        chat = SmolTalk("train")
        if 0 < args.chat_size < len(chat):  # evenly spaced: every source of the split is represented
            chat = chat[::len(chat) // args.chat_size][:args.chat_size]
        train_parts["chat"], val_parts["chat"] = chat, SmolTalk("test")
    if args.identity_size:
        train_parts["identity"] = Identity(size=args.identity_size, seed=args.seed)
        val_parts["identity"] = Identity(size=max(1, args.identity_size // 10), seed=args.seed + 1)
    if args.spelling_size:
        train_parts["SimpleSpelling"] = SimpleSpelling(size=args.spelling_size, split="train", seed=args.seed)
        train_parts["SpellingBee"] = SpellingBee(size=args.spelling_size, split="train", seed=args.seed)
        val_parts["SimpleSpelling"] = SimpleSpelling(size=max(1, args.spelling_size // 10), split="test", seed=args.seed)
        val_parts["SpellingBee"] = SpellingBee(size=max(1, args.spelling_size // 10), split="test", seed=args.seed)
    for path in args.custom_json:
        train_parts[f"custom {path}"] = CustomJSON(path)
    eval_tasks = {name: load_task(name) for name in eval_task_names}
except (FileNotFoundError, RuntimeError, ValueError) as e:  # a missing mirror file, a malformed JSONL line, a bad spec
    sys.exit(f"chat_sft: error: cannot load the mixture: {e}")
train_task = TaskMixture(list(train_parts.values()), seed=args.seed)
val_task = TaskMixture(list(val_parts.values()), seed=args.seed)

if args.num_iterations > 0:
    num_iterations, horizon = args.num_iterations, "--num-iterations"
else:
    num_iterations, horizon = max(1, len(train_task) // args.total_batch_size), "one epoch of the mixture"
num_params, flops_per_token = orig_model.num_params(), orig_model.estimate_flops()
peak_flops, peak_what = get_peak_flops(device, dtype)
eval_rows = 20 * args.total_batch_size if args.eval_rows == -1 else args.eval_rows
run_dir = os.path.join(get_base_dir(), SOURCE_DIRS["sft"], model_tag)

print0(f"source: {args.source} model {model_tag} step {source_meta.get('step')} | {num_params:,} parameters | "
       f"rows of at most {T} tokens")
for name, task in train_parts.items():
    print0(f"  train {name:<22} {len(task):>8,} conversations")
print0(f"  train total {len(train_task):,} conversations | validation {len(val_task):,} conversations")
print0(f"batch: {args.total_batch_size} conversations/step = {args.device_batch_size} rows x {world_size} rank(s) x "
       f"{grad_accum_steps} micro-step(s)")
print0(f"horizon ({horizon}): {num_iterations:,} steps, {num_iterations * args.total_batch_size:,} conversations")
print0(f"lr x {args.init_lr_frac:g}: matrix {args.matrix_lr} | embedding {args.embedding_lr} | unembedding "
       f"{args.unembedding_lr} | compute dtype {str(dtype).removeprefix('torch.')} | MFU against {peak_what}: "
       f"{peak_flops or float('nan'):.4g} FLOP/s | compile {args.compile} | run folder {run_dir}")

optimizers = model.setup_optimizers(unembedding_lr=args.unembedding_lr * args.init_lr_frac,
                                    embedding_lr=args.embedding_lr * args.init_lr_frac,
                                    matrix_lr=args.matrix_lr * args.init_lr_frac, weight_decay=args.weight_decay)
adamw, muon = optimizers
if device_type == "cpu" and dtype == torch.bfloat16:
    for group in muon.param_groups:  # Newton-Schulz in the dtype the matmuls are fast in
        group["ns_dtype"] = "bfloat16"

# -----------------------------------------------------------------------------
# resume, loop state, data

meter = ProgressMeter(None, flops_per_token, peak_flops, world_size, num_iterations)  # tokens vary per step
step, loader_state = 0, None
loop = dict(val_loss=None, val_bpb=None, min_val_loss=None, metrics={})
if args.resume:
    try:
        step, loader_state, meta = load_training_state(run_dir, orig_model, optimizers, device, asdict(config))
    except (FileNotFoundError, CheckpointError) as e:  # nothing to resume / another run / a corrupt file
        sys.exit(f"chat_sft: error: --resume: {e}")
    loop = meta["loop_state"]
    meter.load_state_dict(loop.pop("meter"))
    print0(f"resumed from {run_dir} at step {step}")
if args.compile:
    model = torch.compile(model, dynamic=True)

try:
    train_loader = sft_data_loader_with_state(tokenizer, train_task, args.device_batch_size, T, device=device,
                                              resume_state=loader_state, seed=args.seed)
    val_batches, _ = load_val_batches(tokenizer, val_task, args.device_batch_size, T,
                                      max(1, eval_rows // rows_per_micro_step), packed=False, device=device)
except ValueError as e:  # too little data for one batch, or a resume position of another mixture
    sys.exit(f"chat_sft: error: {e}")
print0(f"validation: {len(val_batches) * rows_per_micro_step:,} conversations per evaluation (asked for {eval_rows:,})")

wandb_run = None
if args.run != "dummy" and master:
    import wandb
    wandb_run = wandb.init(project="nanochat", name=args.run, config=vars(args))
log = RunLog(run_dir, master, resume_step=step if args.resume else None, wandb_run=wandb_run)
stop = StopFlag()
source = dict(source=args.source, model_tag=model_tag, step=source_meta.get("step"))


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
        loop["min_val_loss"] = min(loop["min_val_loss"] or math.inf, loop["val_loss"])
        print0(f"step {step:05d} | val loss {loop['val_loss']:.6f} | val bpb {loop['val_bpb']:.6f} "
               f"| eval {time.perf_counter() - t0:.1f}s")
        log.record(dict(step=step, val_loss=loop["val_loss"], val_bpb=loop["val_bpb"], train_time=meter.train_time))
    if eval_tasks and (last_step or (args.eval_metrics_every > 0 and step % args.eval_metrics_every == 0)):
        t0 = time.perf_counter()
        with autocast:
            results = {name: evaluate_task(orig_model, tokenizer, name, task=task, batch_size=args.device_batch_size,
                                           max_items=args.eval_metrics_max_items)
                       for name, task in eval_tasks.items()}
        loop["metrics"] = {name: r["accuracy"] for name, r in results.items()}
        print0(f"step {step:05d} | " + " | ".join(f"{name} {r['correct']}/{r['total']} = {r['accuracy']:.4f}"
                                                  for name, r in results.items())
               + f" | eval {time.perf_counter() - t0:.1f}s")
        log.record(dict(step=step, **{f"acc_{name}": acc for name, acc in loop["metrics"].items()}))
    if (last_step and args.save_every != 0) or (args.save_every > 0 and step % args.save_every == 0 and step > 0):
        save(step)
    if last_step:
        break

    # one optimizer step. The loss is the mean over the step's trained (assistant) tokens on all ranks:
    # each micro-batch's summed loss over their count; x world_size because the optimizers average ranks.
    t0 = time.perf_counter()
    batches = [next(train_loader) for _ in range(grad_accum_steps)]
    loader_state = batches[-1][2]
    n_targets, n_tokens = count_targets(batches, device)
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
    line, rec = meter.update(step, train_loss, time.perf_counter() - t0, lrm=lrm, tokens=n_tokens, device=device,
                             targets=n_targets, epoch=loader_state["epoch"])
    print0(line, flush=True)
    log.record(rec)
    step += 1

# -----------------------------------------------------------------------------
# summary

summary = dict(step=step, final_val_loss=loop["val_loss"], final_val_bpb=loop["val_bpb"],
               min_val_loss=loop["min_val_loss"], metrics=loop["metrics"], **meter.summary(),
               compute_dtype=str(dtype).removeprefix("torch."), source=source, stopped_on_sigterm=stopping)
if master and not stopping:
    print0(f"final val loss {summary['final_val_loss']:.6f} | val bpb {summary['final_val_bpb']:.6f} | "
           + "".join(f"{name} {acc:.4f} | " for name, acc in loop["metrics"].items())
           + f"training time {summary['training_time_s'] / 60:.2f} min (evaluation excluded)")
    artifacts = finish_run(run_dir, summary, master)
    save_results("chat_sft", name=f"chat_sft_{model_tag}", source=args.source, model_tag=model_tag, step=step,
                 config=vars(args),
                 metrics=dict(val_loss=summary["final_val_loss"], val_bpb=summary["final_val_bpb"],
                              min_val_loss=summary["min_val_loss"], **loop["metrics"], tokens=summary["total_tokens"],
                              mfu=summary["mfu"], tok_per_s=summary["tok_per_s"],
                              training_time_s=summary["training_time_s"], compute_dtype=summary["compute_dtype"]),
                 artifacts=artifacts, extra=dict(source=source, mixture={k: len(v) for k, v in train_parts.items()}))
if wandb_run is not None:
    wandb_run.finish()
compute_cleanup()
