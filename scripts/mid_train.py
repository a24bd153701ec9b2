"""
Mid-train a base model on conversations: the chat format and its special tokens, python tool use,
multiple-choice answering and the model's own identity, before SFT.

    python -m scripts.mid_train                                             # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.mid_train -- --model-tag=d20     # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.mid_train --model-tag=d4 --device-batch-size=8 \
        --total-batch-tokens=4096 --num-iterations=100 --eval-every=50         # a small CPU run
    torchrun --nproc_per_node=2 -m scripts.mid_train -- --model-tag=d4 ...   # 2 CPU processes (gloo)
Under torchrun put "--" before the script's flags (torchrun would take --run=... for its --run-path).

Source: the base checkpoint get_base_dir()/base_checkpoints/<model-tag> (default: the largest d<N>),
step --step (default: the latest). Mixture (tasks/registry.py, CHAT_MIXTURES["mid"], shuffled
together): general chat (SmolTalk schema: the mirror's chat/), GSM8K train with its calculator calls
as python tool calls, ARC-Easy and ARC-Challenge train, MMLU auxiliary_train when it can be had (the
offline mirror has none: a line says so and the run goes on without it), the identity conversations
(tasks/identity.py, from tasks/identity.json) and the two spelling tasks. Conversations are packed into rows of
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
The shared mechanics (flags, set-up, resume, SIGTERM, cadences, progress line, summary, results)
are nanochat/stage.py's.
"""

import argparse
import time

import torch

from nanochat.chat_data import chat_loaders, masked_loss_step, render_row
from nanochat.common import print0
from nanochat.flags import add_batch_flags, add_compile_flag, add_compute_flags, add_eval_tokens_flag, \
    add_optimizer_flags, add_run_flags, add_source_flags
from nanochat.stage import Stage, due
from nanochat.tokenizer import get_token_bytes
from tasks.registry import CHAT_MIXTURES, chat_mixture, mixtures

MIXTURE = CHAT_MIXTURES["mid"]
parser = argparse.ArgumentParser(description="Mid-train a base model on conversations.")
add_compute_flags(parser)
add_compile_flag(parser)
add_source_flags(parser, ("base",), default="base", help_tag="base model tag to start from, also the run folder name "
                                                             "(default: the largest d<N>)")
add_run_flags(parser, horizon="about one epoch of the mixture", eval_every=150, seed_help="seed of the mixture's order")
# data
parser.add_argument("--max-seq-len", type=int, default=None, help="row length T (default: the base model's sequence length)")
parser.add_argument("--chat-size", type=int, default=-1, help="general chat conversations in the mixture (-1: all; 0: none)")
parser.add_argument("--identity-size", type=int, default=MIXTURE["identity_size"], help="identity conversations in the mixture (0: none)")
parser.add_argument("--spelling-size", type=int, default=MIXTURE["spelling_size"], help="items of each spelling task in the mixture (0: none)")
# optimization
add_batch_flags(parser, "tokens", device_batch_size=32, total=524288)
add_optimizer_flags(parser, init_lr_frac=1.0, warmdown_ratio=0.2)
add_eval_tokens_flag(parser)
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags before any process group exists (every rank exits the same way)

run = Stage("mid_train", parser, args)
if args.max_seq_len is not None and args.max_seq_len < 1:
    parser.error("--max-seq-len must be >= 1")
if args.chat_size < -1 or args.identity_size < 0 or args.spelling_size < 0:
    parser.error("--chat-size must be >= -1, --identity-size and --spelling-size >= 0")
if args.eval_tokens is not None and args.eval_tokens < 1:
    parser.error(f"--eval-tokens must be positive (omit it for 20 x --total-batch-tokens), got {args.eval_tokens}")

# -----------------------------------------------------------------------------
# compute, source model, data

run.init_compute()
device = run.device
model, tokenizer, _ = run.load_source("base")
token_bytes = get_token_bytes(device)
T = run.row_length(model)
rows = 1 if args.device_batch_size == "auto" else args.device_batch_size  # auto: fitted below, a divisor of the rows
rows_per_rank = rows * run.check_total_batch("tokens", rows * T * run.world_size,
                                             f"--device-batch-size {rows} x --max-seq-len {T}")
use_compile = run.device_type == "cuda" if args.compile is None else args.compile
orig_model = model  # uncompiled: for state dicts
run.set_run_dir("mid", run.source["model_tag"])
dtype, autocast = run.pick_dtype()

try:
    train_parts, val_parts = chat_mixture("mid", args.seed, args.identity_size, args.spelling_size, args.chat_size,
                                          log=print0)
except (FileNotFoundError, RuntimeError, ValueError) as e:  # a missing mirror file, no hub access, a bad spec
    run.fail(f"cannot load the mixture: {e}")
train_task, val_task = mixtures(train_parts, val_parts, args.seed, log=print0)

total_batch = args.total_batch_tokens
if args.num_iterations is not None:
    num_iterations, horizon = args.num_iterations, "--num-iterations"
else:
    # one epoch ~ conversations x their mean rendered length (cut to a row), from an evenly spaced sample
    n = len(train_task)
    sample = sorted({k * n // min(n, 1000) for k in range(min(n, 1000))})
    mean_len = sum(len(render_row(tokenizer, train_task[i], T + 1)[0]) for i in sample) / len(sample)
    num_iterations = max(1, round(n * mean_len / total_batch))
    horizon = f"one epoch: {n:,} conversations x ~{mean_len:.0f} tokens (mean of {len(sample)})"
num_params, flops_per_token = orig_model.num_params(), orig_model.estimate_flops()
eval_tokens = 20 * total_batch if args.eval_tokens is None else args.eval_tokens

print0(f"horizon ({horizon}): {num_iterations:,} steps, {num_iterations * total_batch:,} tokens")
optimizers = run.setup_optimizers(orig_model)
if use_compile:
    model = torch.compile(model, dynamic=False)
grad_accum_steps = rows_per_rank // run.fit_device_batch(T, rows_per_rank, model)  # resolves auto
tokens_per_micro_step = args.device_batch_size * T * run.world_size
print0(f"rows of {T} tokens | FLOPs per token {flops_per_token:.4g} | batch: {total_batch:,} tokens/step = {args.device_batch_size} rows x {T} tokens x "
       f"{run.world_size} rank(s) x {grad_accum_steps} micro-step(s) | compile {use_compile}")

# -----------------------------------------------------------------------------
# resume, loop state, data

loader_state = run.start(dict(val_bpb=None, val_loss=None, min_val_bpb=None, min_val_loss=None), total_batch, flops_per_token,
                         num_iterations)
try:  # packed rows (CHAT_MIXTURES["mid"])
    train_loader, val_batches = chat_loaders(MIXTURE["rows"], tokenizer, train_task, val_task, args.device_batch_size, T,
                                             max(1, eval_tokens // (tokens_per_micro_step * grad_accum_steps)), device, loader_state,
                                             args.seed, micro_steps=grad_accum_steps)
except ValueError as e:  # too little data for one batch, or a resume position of another mixture
    run.fail(e)


def evaluate(step, last):
    """Val loss and bpb on the assistant tokens of the held-out mixture."""
    if due(step, args.eval_every, last):
        run.evaluate_val_loss(model, val_batches, token_bytes)


# -----------------------------------------------------------------------------
# the loop: the loss is the mean over the step's trained (assistant) tokens on all ranks

for step in run.steps(evaluate):
    t0 = time.perf_counter()
    loss, n_targets, _, run.data_state = masked_loss_step(model, train_loader, grad_accum_steps, autocast, device)
    lrm = run.optimizer_step()
    run.end_step(loss, t0, lrm=lrm, targets=n_targets, epoch=run.data_state["epoch"])

# -----------------------------------------------------------------------------
# summary

loop = run.loop
run.finish(dict(final_val_bpb=loop["val_bpb"], final_val_loss=loop["val_loss"], min_val_bpb=loop["min_val_bpb"]),
           metrics=dict(val_bpb=loop["val_bpb"], val_loss=loop["val_loss"], min_val_bpb=loop["min_val_bpb"]),
           extra=dict(source=run.source, mixture={k: len(v) for k, v in train_parts.items()}))
