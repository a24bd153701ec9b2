"""
Supervised fine-tuning: one conversation per row, the loss on the assistant's tokens only, from
the mid-trained model (or the base model with --source base) to the chat model.

    python -m scripts.chat_sft                                              # one process: 1 GPU, MPS or CPU
    torchrun --nproc_per_node=8 -m scripts.chat_sft -- --model-tag=d20      # 8 GPUs (NCCL)
    NANOCHAT_DATA_DIR=../shared/data python -m scripts.chat_sft --model-tag=d4 --device-batch-size=4 \
        --total-batch-rows=16 --num-iterations=100 --eval-every=50            # a small CPU run
    torchrun --nproc_per_node=2 -m scripts.chat_sft -- --model-tag=d4 ...    # 2 CPU processes (gloo)
    python -m scripts.chat_sft --custom-json=my_bot.jsonl                   # add your own conversations
Under torchrun put "--" before the script's flags (torchrun would take --run=... for its --run-path).

Source: get_base_dir()/<mid_checkpoints | base_checkpoints>/<model-tag> (default: the largest d<N>),
step --step (default: the latest). Mixture (tasks/registry.py, CHAT_MIXTURES["sft"], shuffled
together): ARC-Easy and ARC-Challenge
train, GSM8K train (python tool calls), --chat-size general chat conversations (evenly spaced over
the mirror's chat/ train split), the identity conversations (tasks/identity.py), the spelling tasks
and every --custom-json file (tasks/customjson.py; a malformed line is an error naming file and line).

Batches (nanochat/chat_data.py): --device-batch-size conversations per micro-batch, each cut to
--max-seq-len + 1 tokens and padded to the longest of the batch; --total-batch-rows counts the
conversations of one optimizer step on all ranks. The loss is the mean over the step's assistant
tokens on all ranks (each micro-batch's summed loss over the step's count), so padding, uneven
conversation lengths and micro-batches with no trained token at all (a prompt longer than a row)
change nothing: such a micro-batch adds zero loss and zero gradient. Horizon: --num-iterations, or
by default one epoch of the mixture. Learning rates: the base rates x --init-lr-frac (0.02), decayed
linearly to 0 over the run (--warmdown-ratio 1).

Evaluation: every --eval-every steps the mean loss and bpb on the assistant tokens of a held-out
mixture (chat test split, GSM8K test, ARC validation, other identity and spelling items, each read
at most once); every --eval-metrics-every steps the accuracy on --eval-items items (a seeded sample)
of each --eval-tasks task (nanochat.task_eval.evaluate_task, tasks/registry.py). The shared mechanics
(flags, set-up, resume, SIGTERM, cadences, progress line, summary, results) are nanochat/stage.py's.

The run folder is get_base_dir()/chat_checkpoints/<model-tag>: checkpoints, log.jsonl, summary.json
and loss.svg; the final metrics go to get_base_dir()/results/chat_sft_<model-tag>.json. --resume
continues from the run's latest checkpoint exactly; SIGTERM finishes the step, saves and exits 0.
"""

import argparse
import math
import time

import torch

from nanochat.chat_data import MIN_BUCKET, chat_loaders, masked_loss_step
from nanochat.common import print0
from nanochat.flags import add_batch_flags, add_compile_flag, add_compute_flags, add_eval_items_flag, \
    add_optimizer_flags, add_run_flags, add_source_flags, optional_int, renamed
from nanochat.stage import Stage, due
from nanochat.task_eval import evaluate_task, score_intervals
from nanochat.tokenizer import get_token_bytes
from tasks.registry import CHAT_MIXTURES, EVAL_TASKS, chat_mixture, load_eval_task, mixtures

MIXTURE = CHAT_MIXTURES["sft"]
parser = argparse.ArgumentParser(description="Supervised fine-tuning on conversations.")
add_compute_flags(parser)
add_compile_flag(parser, default=False, why="off: padded widths vary; with it they are bucketed to powers of two")
add_source_flags(parser, ("mid", "base"), default="mid", help_tag="model tag to start from, also the run folder name "
                                                                  "(default: the largest d<N>)")
add_run_flags(parser, horizon="one epoch of the mixture", eval_every=100, seed_help="seed of the mixture's order")
# data
parser.add_argument("--max-seq-len", type=int, default=None, help="longest row T; longer conversations are cut (default: the model's)")
parser.add_argument("--chat-size", type=int, default=MIXTURE["chat_size"], help="general chat conversations in the mixture (-1: all; 0: none)")
parser.add_argument("--identity-size", type=int, default=MIXTURE["identity_size"], help="identity conversations in the mixture (0: none)")
parser.add_argument("--spelling-size", type=int, default=MIXTURE["spelling_size"], help="items of each spelling task in the mixture (0: none)")
parser.add_argument("--custom-json", action="append", default=[], metavar="FILE",
                    help="a JSONL file of your own conversations to add (see tasks/customjson.py); may be repeated")
# optimization
add_batch_flags(parser, "rows", device_batch_size=4, total=32)
add_optimizer_flags(parser, init_lr_frac=0.02, warmdown_ratio=1.0)
# evaluation
parser.add_argument("--eval-rows", type=optional_int, default=None,
                    help="val conversations per evaluation, all ranks together, each read at most once (default: 20 x --total-batch-rows)")
parser.add_argument("--eval-tasks", default="MMLU,ARC-Easy", help="comma-separated tasks of tasks/registry.py to score ('' : none)")
parser.add_argument("--eval-metrics-every", type=optional_int, default=200, help="score --eval-tasks every N steps (and at the end; None: only at the end)")
add_eval_items_flag(parser, default=1024)
renamed(parser, "--eval-metrics-max-items", "--eval-items")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# check the flags before any process group exists (every rank exits the same way)

run = Stage("chat_sft", parser, args)
if args.eval_items is not None and args.eval_items < 1:
    parser.error("--eval-items must be >= 1")
rows = 1 if args.device_batch_size == "auto" else args.device_batch_size  # auto: fitted below, a divisor of the rows
rows_per_rank = rows * run.check_total_batch("rows", rows * run.world_size, f"--device-batch-size {rows}")
if args.max_seq_len is not None and args.max_seq_len < 1:
    parser.error(f"--max-seq-len must be >= 1 (omit it for the model's), got {args.max_seq_len}")
if args.chat_size < -1 or args.identity_size < 0 or args.spelling_size < 0:
    parser.error("--chat-size must be >= -1, --identity-size and --spelling-size >= 0")
if args.eval_rows is not None and args.eval_rows < 1:
    parser.error(f"--eval-rows must be positive (omit it for 20 x --total-batch-rows), got {args.eval_rows}")
eval_task_names = [name.strip() for name in args.eval_tasks.split(",") if name.strip()]
for name in eval_task_names:
    if name not in EVAL_TASKS:
        parser.error(f"--eval-tasks: unknown task {name!r}; choose from {', '.join(EVAL_TASKS)}")

# -----------------------------------------------------------------------------
# compute, source model, data

run.init_compute()
device = run.device
model, tokenizer, _ = run.load_source(args.source)
token_bytes = get_token_bytes(device)
T = run.row_length(model)
orig_model = model  # uncompiled: for state dicts and the task evaluations (variable shapes)
run.set_run_dir("sft", run.source["model_tag"])
dtype, autocast = run.pick_dtype()

try:
    train_parts, val_parts = chat_mixture("sft", args.seed, args.identity_size, args.spelling_size, args.chat_size,
                                          custom_json=args.custom_json, log=print0)
    eval_tasks = {name: load_eval_task(name) for name in eval_task_names}
except (FileNotFoundError, RuntimeError, ValueError) as e:  # a missing mirror file, a malformed JSONL line, a bad spec
    run.fail(f"cannot load the mixture: {e}")
train_task, val_task = mixtures(train_parts, val_parts, args.seed, log=print0)

total_batch = args.total_batch_rows
num_iterations, horizon = ((args.num_iterations, "--num-iterations") if args.num_iterations is not None
                            else (max(1, len(train_task) // total_batch), "one epoch of the mixture"))
num_params, flops_per_token = orig_model.num_params(), orig_model.estimate_flops()
eval_rows = 20 * total_batch if args.eval_rows is None else args.eval_rows

print0(f"horizon ({horizon}): {num_iterations:,} steps, {num_iterations * total_batch:,} conversations")
optimizers = run.setup_optimizers(orig_model)
grad_accum_steps = rows_per_rank // run.fit_device_batch(T, rows_per_rank)  # auto: tried at full rows of T tokens
rows_per_micro_step = args.device_batch_size * run.world_size
print0(f"rows of at most {T} tokens | batch: {total_batch} conversations/step = {args.device_batch_size} rows x {run.world_size} rank(s) x "
       f"{grad_accum_steps} micro-step(s) | compile {args.compile}")

# -----------------------------------------------------------------------------
# resume, loop state, data

loader_state = run.start(dict(val_loss=None, val_bpb=None, min_val_loss=None, min_val_bpb=None, metrics={}, intervals={}), None, flops_per_token,
                         num_iterations, plan=dict(tokens=num_iterations * total_batch * T,
                                                   note=f"tokens: rows of at most {T}, an upper bound"))  # tokens vary
if args.compile:  # static shapes: the padded widths are bucketed (nanochat/chat_data.py bucket_width), each compiled once
    num_buckets = math.ceil(math.log2(max(T, MIN_BUCKET) / MIN_BUCKET)) + 1
    # training and evaluation (no_grad) of every bucket: each a graph of the one forward
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * num_buckets)
    model = torch.compile(model, dynamic=False)
try:  # padded rows (CHAT_MIXTURES["sft"])
    train_loader, val_batches = chat_loaders(MIXTURE["rows"], tokenizer, train_task, val_task, args.device_batch_size, T,
                                             max(1, eval_rows // (rows_per_micro_step * grad_accum_steps)), device, loader_state,
                                             args.seed, micro_steps=grad_accum_steps, bucket=bool(args.compile))
except ValueError as e:  # too little data for one batch, or a resume position of another mixture
    run.fail(e)


def evaluate(step, last):
    """Val loss and bpb of the held-out mixture; the accuracy on each --eval-tasks task."""
    if due(step, args.eval_every, last):
        run.evaluate_val_loss(model, val_batches, token_bytes)
    if eval_tasks and due(step, args.eval_metrics_every, last):
        t0 = time.perf_counter()
        with autocast:
            results = {name: evaluate_task(orig_model, tokenizer, name, task, batch_size=args.device_batch_size,
                                           max_items=args.eval_items) for name, task in eval_tasks.items()}
        run.loop["metrics"] = {name: r["accuracy"] for name, r in results.items()}
        run.loop["intervals"] = score_intervals(results)  # 95% Wilson per task (report.md shows them)
        run.record_eval(" | ".join(f"{name} {r['correct']}/{r['total']} = {r['accuracy']:.4f}" for name, r in results.items())
                        + f" | eval {time.perf_counter() - t0:.1f}s",
                        **{f"acc_{name}": acc for name, acc in run.loop["metrics"].items()})


# -----------------------------------------------------------------------------
# the loop: the loss is the mean over the step's trained (assistant) tokens on all ranks, so padding
# and rows with no trained token change nothing

for step in run.steps(evaluate):
    t0 = time.perf_counter()
    loss, n_targets, n_tokens, run.data_state = masked_loss_step(model, train_loader, grad_accum_steps, autocast,
                                                                 device)
    lrm = run.optimizer_step()
    run.end_step(loss, t0, lrm=lrm, tokens=n_tokens, targets=n_targets, epoch=run.data_state["epoch"])

# -----------------------------------------------------------------------------
# summary

loop = run.loop
run.finish(dict(final_val_loss=loop["val_loss"], final_val_bpb=loop["val_bpb"], min_val_loss=loop["min_val_loss"],
                metrics=loop["metrics"]),
           metrics=dict(val_loss=loop["val_loss"], val_bpb=loop["val_bpb"], min_val_loss=loop["min_val_loss"],
                        **loop["metrics"]),
           extra=dict(source=run.source, mixture={k: len(v) for k, v in train_parts.items()},
                      intervals=loop.get("intervals") or {}))
