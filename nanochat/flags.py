"""
One flag language for every script: each flag that two scripts share is defined here once, with one
name, one meaning and one unit (the README's flag table lists them). A script adds the groups it
needs and keeps its own flags beside them.

    parser = argparse.ArgumentParser(...)
    add_compute_flags(parser)                        # --device-type, --dtype
    add_source_flags(parser, ("mid", "sft", "rl"), default="sft")   # -i, --model-tag, --step, --hf-path
    add_reply_flags(parser, max_new_tokens=512, temperature=0.6, top_k=50)

Units are in the names: a batch counted in tokens says `-tokens`, one counted in rows (sequences,
conversations, completions) says `-rows`, an evaluation size says what it counts (`--eval-tokens`,
`--eval-items` per task). "Not given" is None, never "" or -1.

Old names that users may have in their scripts keep working through `renamed`: the value goes to
the new flag and a line on stderr names the new flag. The old spelling -1 of "not given" (-1 steps,
-1 tokens) still reads as None.

The training stages add the groups of nanochat/stage.py's runner as well:
    add_batch_flags(parser, "tokens", device_batch_size=32, total=524288)   # --total-batch-tokens
    add_optimizer_flags(parser, init_lr_frac=0.02, warmdown_ratio=1.0)      # lrs, weight decay, schedule
    add_run_flags(parser, horizon="one epoch", eval_every=100, save_every=None)   # cadences, --resume, wandb
"""

import argparse
import sys

COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
DEVICE_TYPES = ("cuda", "mps", "cpu")


class _Renamed(argparse.Action):
    """An old flag name: stores into the new flag's dest and says the new name on stderr."""

    def __init__(self, option_strings, dest, new_name, **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated and will be removed; use {self.new_name}",
              file=sys.stderr)
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def renamed(parser, old, new):
    """Keep the old flag name `old` working as the existing flag `new` (same dest, type, unit)."""
    action = next((a for a in parser._actions if new in a.option_strings), None)
    assert action is not None, f"renamed({old!r}, {new!r}): {new} must be added first"
    kwargs = {} if action.nargs == 0 else {"type": action.type, "choices": action.choices}
    parser.add_argument(old, dest=action.dest, action=_Renamed, new_name=new, help=argparse.SUPPRESS,
                        nargs=action.nargs, default=argparse.SUPPRESS, **kwargs)


def optional_int(text):
    """argparse type of a count whose "not given" is None; the old spelling -1 reads as None too."""
    value = int(text)
    return None if value == -1 else value


def add_compute_flags(parser):
    """--device-type (None: autodetect cuda > mps > cpu) and --dtype (auto everywhere)."""
    parser.add_argument("--device-type", default=None, choices=DEVICE_TYPES, help="device (default: autodetect)")
    parser.add_argument("--dtype", default="auto", choices=COMPUTE_DTYPES,
                        help="compute dtype: auto = bf16 on CUDA, and on CPU where bf16 matmuls measure faster than fp32")


def add_source_flags(parser, sources, default=None, help_tag=None):
    """-i/--source (the stage whose checkpoint is loaded), --model-tag and --step (None: the largest
    d<N> and its latest step), or --hf-path (a Hugging Face folder instead; load_model(hf_path=...)).
    default None makes one of --source and --hf-path required; the two exclude each other."""
    group = parser.add_mutually_exclusive_group(required=default is None)
    group.add_argument("-i", "--source", default=default, choices=sources, help="which stage's checkpoint to load")
    add_hf_path_flag(group)
    parser.add_argument("--model-tag", default=None,
                        help=help_tag or "model tag of that stage (default: the largest d<N>)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


class _HFPath(argparse.Action):
    """--hf-path DIR: stores DIR and sets --source to "hf", so that what a script prints and records
    says where the model came from."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, "source", "hf")


def add_hf_path_flag(parser):
    """--hf-path DIR: load a Hugging Face nanochat folder (scripts/export_hf.py's, or transformers'
    converter's) instead of a checkpoint; args.source becomes "hf". A no-op when the parser has it."""
    if "--hf-path" not in getattr(parser, "_option_string_actions", {}):
        parser.add_argument("--hf-path", default=None, action=_HFPath,
                            help="load this Hugging Face folder (config.json, model.safetensors, tokenizer.json) "
                                 "instead of a checkpoint")


def add_reply_flags(parser, max_new_tokens, temperature, top_k):
    """--max-new-tokens, --temperature, --top-k: how replies are generated (defaults are the script's)."""
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="most tokens generated per reply")
    parser.add_argument("--temperature", type=float, default=temperature, help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-k", type=int, default=top_k, help="sample from the k most likely tokens (0 = all)")
    renamed(parser, "--max-tokens", "--max-new-tokens")


def add_eval_items_flag(parser, default, what="task"):
    """--eval-items: items per task and evaluation (None: every item of the split)."""
    parser.add_argument("--eval-items", type=int, default=default,
                        help=f"items per {what} and evaluation, a seeded sample of the split (default: {default or 'all'})")
    renamed(parser, "--max-per-task", "--eval-items")


# -----------------------------------------------------------------------------
# the training stages (nanochat/stage.py)

def add_compile_flag(parser, default=None, why="on CUDA only"):
    """--compile / --no-compile: torch.compile the model (None: on CUDA only)."""
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=default,
                        help=f"torch.compile the model (default: {why})")


def add_batch_flags(parser, unit, device_batch_size, total):
    """--device-batch-size (rows per forward/backward on each device) and the optimizer step's size:
    --total-batch-tokens (unit "tokens") or --total-batch-rows (unit "rows"), all ranks and
    micro-steps together. The old --total-batch-size keeps working as the stage's one."""
    assert unit in ("tokens", "rows"), f"a batch is counted in tokens or rows, not {unit!r}"
    parser.add_argument("--device-batch-size", type=device_batch_size_arg, default=None,
                        help=f"rows per forward/backward on each device, or 'auto': the largest power of two that "
                             f"fits, measured (default: auto on CUDA, {device_batch_size} elsewhere)")
    parser.set_defaults(default_device_batch_size=device_batch_size)  # what None becomes off CUDA (nanochat/stage.py)
    parser.add_argument(f"--total-batch-{unit}", type=int, default=total,
                        help=f"{unit} per optimizer step, all ranks and micro-steps together")
    renamed(parser, "--total-batch-size", f"--total-batch-{unit}")


def add_optimizer_flags(parser, init_lr_frac=1.0, warmup_ratio=0.0, warmdown_ratio=0.2, final_lr_frac=0.0):
    """The learning rates of GPT.setup_optimizers (x --init-lr-frac), weight decay and the lr schedule
    of nanochat/schedules.py (warm-up, flat, warm-down to --final-lr-frac)."""
    parser.add_argument("--embedding-lr", type=float, default=0.2, help="AdamW lr of the embedding (before width scaling)")
    parser.add_argument("--unembedding-lr", type=float, default=0.004, help="AdamW lr of the head (before width scaling)")
    parser.add_argument("--matrix-lr", type=float, default=0.02, help="Muon lr of the block matrices")
    parser.add_argument("--init-lr-frac", type=float, default=init_lr_frac, help="every lr above is multiplied by this")
    parser.add_argument("--weight-decay", type=float, default=0.0, help="weight decay of both optimizers")
    parser.add_argument("--warmup-ratio", type=float, default=warmup_ratio,
                        help="fraction of the horizon spent warming the lr up from 0")
    parser.add_argument("--warmdown-ratio", type=float, default=warmdown_ratio,
                        help="fraction of the horizon at the end spent decaying the lr")
    parser.add_argument("--final-lr-frac", type=float, default=final_lr_frac,
                        help="lr multiplier reached at the end of the warm-down")


def add_run_flags(parser, horizon, eval_every, save_every=None, seed_help="seed"):
    """--num-iterations (None: `horizon`), --eval-every and --save-every (None: only at the end;
    --save-every 0: never), --resume, --run (wandb) and --seed."""
    parser.add_argument("--num-iterations", type=optional_int, default=None,
                        help=f"optimizer steps (default: {horizon})")
    parser.add_argument("--eval-every", type=optional_int, default=eval_every,
                        help="evaluate every N steps and at the end (None: only at the end)")
    parser.add_argument("--save-every", type=optional_int, default=save_every,
                        help="checkpoint every N steps and at the end (None: only at the end; 0: never)")
    parser.add_argument("--resume", action="store_true", help="continue exactly from the latest checkpoint of the run folder")
    parser.add_argument("--run", default=None, help="wandb run name (default: no wandb; 'dummy' is no wandb too)")
    parser.add_argument("--seed", type=int, default=42, help=seed_help)
    add_plan_flags(parser)


def add_eval_tokens_flag(parser, default_help="20 x --total-batch-tokens"):
    """--eval-tokens: tokens of one val-loss evaluation, all ranks together, each read at most once."""
    parser.add_argument("--eval-tokens", type=optional_int, default=None,
                        help=f"val tokens per evaluation, all ranks together, each read at most once (default: {default_help})")


def device_batch_size_arg(text):
    """argparse type of --device-batch-size: a count >= 1 or "auto"."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1 or 'auto', got {text!r}")
    return value


def add_plan_flags(parser):
    """--dry-run (print the run's plan, nanochat/plan.py, and stop before training) and the hardware
    of a plan: --gpu and --num-gpus (None: this machine's), the figures of a GPU the table does not
    know, the MFU of the time estimate. Every training stage has them (add_run_flags adds them)."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (parameters, tokens, FLOPs, memory per GPU, time, cost) and stop")
    parser.add_argument("--gpu", default=None, help="plan for this GPU model, e.g. H100, A100 80GB (default: this machine's)")
    parser.add_argument("--num-gpus", type=int, default=None, help="GPUs of the planned run (default: the world size)")
    parser.add_argument("--gpu-memory-gb", type=float, default=None, help="memory of a GPU the table does not know, GB")
    parser.add_argument("--gpu-peak-tflops", type=float, default=None,
                        help="dense bf16 peak of a GPU the table does not know, TFLOP/s (its datasheet)")
    parser.add_argument("--mfu", type=float, default=None, help="MFU of the plan's time estimate (default: nanochat/plan.py's)")
