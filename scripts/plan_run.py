"""
The plan of the whole speedrun before it spends money: each training stage's plan (nanochat/plan.py:
parameters, tokens, steps, FLOPs, memory per GPU, time at a stated MFU, cost at $NANOCHAT_GPU_PRICE),
then the total. No training, no data needed, nothing downloaded or written.

    PLAN=1 bash speedrun.sh                                       # what speedrun.sh would run, on this node
    python -m scripts.plan_run --gpu H100 --num-gpus 8            # from a laptop: 8 x H100 SXM
    NANOCHAT_GPU_PRICE=3 python -m scripts.plan_run --gpu "A100 80GB" --num-gpus 8 --depth 20
    python -m scripts.plan_run --gpu "MI300X" --gpu-memory-gb 192 --gpu-peak-tflops 1307 --num-gpus 8

base_train's numbers are those of `python -m scripts.base_train --dry-run` (the same functions; the
micro-batch the planner's estimate fits; the vocab of the trained tokenizer, else tok_train's default).
The later stages' horizons depend on their data, which a plan does not read: they are planned at the
sizes stated below (the public datasets' row counts and an assumed mean length), and labelled so.
Their --dry-run, once their source checkpoint exists, gives the exact figures. NOT covered: the
tokenizer (CPU, minutes), the evaluations (base_loss, base_eval, chat_eval: no autograd, short), the
data download.
"""

import argparse
import sys

import torch

from nanochat.plan import DEFAULT_MFU, PLAN_VOCAB_SIZE, RL_MFU, PlanError, base_config, candidates, detect_hardware, \
    fmt_time, format_plan, largest_fitting, memory_plan, meta_model, resolve_hardware, stage_plan

# The post-training stages' horizons at the speedrun's defaults, without reading the data.
MEAN_CONVERSATION_TOKENS = 400  # assumed: rendered tokens of a mixture conversation, cut to a row
MID_CONVERSATIONS = 460_000 + 7_473 + 2_251 + 1_119 + 99_842 + 1_000 + 2 * 10_000  # SmolTalk, GSM8K, ARC-E/C, MMLU aux, identity, spelling
SFT_ROWS = 2_251 + 1_119 + 7_473 + 10_000 + 1_000 + 2 * 300  # ARC-E/C, GSM8K, chat, identity, spelling
RL_QUESTIONS, RL_Q_PER_STEP, RL_SAMPLES, RL_SLOT = 7_473, 16, 16, 512  # GSM8K train; slot: prompt + 256 new, at most

parser = argparse.ArgumentParser(description="Plan the whole speedrun: every training stage, then the total.")
parser.add_argument("--depth", type=int, default=20, help="base_train --depth")
parser.add_argument("--max-seq-len", type=int, default=2048, help="base_train --max-seq-len")
parser.add_argument("--total-batch-tokens", type=int, default=524288, help="tokens per optimizer step (base, mid)")
parser.add_argument("--target-param-data-ratio", type=float, default=20.0, help="base_train's tokens per parameter")
parser.add_argument("--sft-rows", type=int, default=32, help="chat_sft --total-batch-rows")
parser.add_argument("--rl", type=int, default=1, choices=(0, 1), help="plan chat_rl too (speedrun's RUN_RL)")
parser.add_argument("--vocab-size", type=int, default=None, help="vocab (default: the trained tokenizer's, else 32768)")
parser.add_argument("--gpu", default=None, help="plan for this GPU model (default: this machine's GPU)")
parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the run (default: all of this machine's)")
parser.add_argument("--gpu-memory-gb", type=float, default=None, help="memory of a GPU the table does not know, GB")
parser.add_argument("--gpu-peak-tflops", type=float, default=None, help="dense bf16 peak of a GPU the table does not know")
parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="MFU of the training stages' time estimate")
args = parser.parse_args()

try:
    if args.gpu:
        hw = resolve_hardware(args.gpu, args.num_gpus or 1, args.gpu_memory_gb, args.gpu_peak_tflops)
    elif torch.cuda.is_available():
        hw = detect_hardware("cuda", args.num_gpus or torch.cuda.device_count(), torch.bfloat16, args.gpu_memory_gb,
                             args.gpu_peak_tflops)
    else:
        sys.exit("plan_run: error: no GPU here; name the one to plan for: --gpu H100 --num-gpus 8 (or PLAN_GPU=H100)")
except PlanError as e:
    sys.exit(f"plan_run: error: {e}")
vocab = args.vocab_size
if vocab is None:
    try:
        from nanochat.tokenizer import get_tokenizer
        vocab, vocab_why = get_tokenizer().get_vocab_size(), "the trained tokenizer's"
    except (FileNotFoundError, ValueError, OSError):
        vocab, vocab_why = PLAN_VOCAB_SIZE, "tok_train's default (no tokenizer yet)"
else:
    vocab_why = "--vocab-size"

config = base_config(args.depth, vocab, args.max_seq_len)
T, world = args.max_seq_len, hw.count
if args.total_batch_tokens % (T * world):
    sys.exit(f"plan_run: error: --total-batch-tokens {args.total_batch_tokens} is not a multiple of --max-seq-len {T} "
             f"x {world} GPU(s)")
rows_per_rank = args.total_batch_tokens // (T * world)


def fitted(rows, seq_len):
    """The micro-batch the estimate fits (what --device-batch-size auto measures on the node) and its memory."""
    def memory(b):
        return memory_plan(config, b, seq_len, world, torch.bfloat16, "cuda", True, grad_accum=rows // b)
    b = largest_fitting(candidates(rows), lambda b: stage_plan("", config, 0, 0, hw, memory(b)))
    if b is None:
        sys.exit(f"plan_run: error: not even one row of {seq_len} tokens fits a {hw.name} at depth {args.depth}; "
                 f"lower --depth or --max-seq-len, or use more GPUs")
    return memory(b)


model = meta_model(config)
params = model.num_params()
base_steps = round(args.target_param_data_ratio * params / args.total_batch_tokens)
plans = [stage_plan("base_train", config, base_steps * args.total_batch_tokens, base_steps, hw,
                    fitted(rows_per_rank, T), args.mfu, note=f"vocab {vocab:,}: {vocab_why}")]
mid_tokens = MID_CONVERSATIONS * MEAN_CONVERSATION_TOKENS
plans.append(stage_plan("mid_train", config, mid_tokens, max(1, round(mid_tokens / args.total_batch_tokens)), hw,
                        fitted(rows_per_rank, T), args.mfu,
                        note=f"assumed: {MID_CONVERSATIONS:,} conversations x ~{MEAN_CONVERSATION_TOKENS} tokens "
                             f"(one epoch; the real count is the data's)"))
sft_steps = SFT_ROWS // args.sft_rows
plans.append(stage_plan("chat_sft", config, sft_steps * args.sft_rows * T, sft_steps, hw,
                        fitted(max(1, args.sft_rows // world), T), args.mfu,
                        note=f"assumed: {SFT_ROWS:,} rows, one epoch; tokens at full rows of {T} (an upper bound)"))
if args.rl:
    steps = RL_QUESTIONS // RL_Q_PER_STEP
    matmul = params - model.transformer.wte.weight.numel()
    plans.append(stage_plan("chat_rl", config, steps * RL_Q_PER_STEP * RL_SAMPLES * RL_SLOT, steps, hw,
                            memory_plan(config, 8, RL_SLOT, world, torch.bfloat16, "cuda", False), RL_MFU,
                            flops_per_token=model.estimate_flops() + 2 * matmul,
                            note=f"assumed: {steps} steps x {RL_Q_PER_STEP} questions x {RL_SAMPLES} samples x "
                                 f"{RL_SLOT} tokens (an upper bound); MFU {RL_MFU:.0%} (decoding-bound)"))

for p in plans:
    print(format_plan(p))
    print()
seconds = sum(p.seconds for p in plans)
costs = [p.cost for p in plans]
cost = f"${sum(costs):,.2f}" if None not in costs else "set $NANOCHAT_GPU_PRICE ($/GPU-hour)"
print(f"total of the training stages on {world} x {hw.name}: {fmt_time(seconds)}, "
      f"{sum(p.flops for p in plans):.4g} FLOPs, cost {cost}; not counted: the tokenizer, the evaluations, the download")
if not all(p.fits for p in plans):
    sys.exit("plan_run: error: a stage does not fit (above); see its memory line")
