"""
One flag language for every script: each flag that two scripts share is defined here once, with one
name, one meaning and one unit (the README's flag table lists them). A script adds the groups it
needs and keeps its own flags beside them.

    parser = argparse.ArgumentParser(...)
    add_compute_flags(parser)                        # --device-type, --dtype
    add_source_flags(parser, ("mid", "sft", "rl"), default="sft")   # -i, --model-tag, --step
    add_reply_flags(parser, max_new_tokens=512, temperature=0.6, top_k=50)

Units are in the names: a batch counted in tokens says `-tokens`, one counted in rows (sequences,
conversations, completions) says `-rows`, an evaluation size says what it counts (`--eval-tokens`,
`--eval-items` per task). "Not given" is None, never "" or -1.

Old names that users may have in their scripts keep working through `renamed`: the value goes to
the new flag and a line on stderr names the new flag.
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


def add_compute_flags(parser):
    """--device-type (None: autodetect cuda > mps > cpu) and --dtype (auto everywhere)."""
    parser.add_argument("--device-type", default=None, choices=DEVICE_TYPES, help="device (default: autodetect)")
    parser.add_argument("--dtype", default="auto", choices=COMPUTE_DTYPES,
                        help="compute dtype: auto = bf16 on CUDA, and on CPU where bf16 matmuls measure faster than fp32")


def add_source_flags(parser, sources, default=None, help_tag=None):
    """-i/--source (the stage whose checkpoint is loaded), --model-tag and --step (None: the largest
    d<N> and its latest step). default None makes --source required."""
    parser.add_argument("-i", "--source", default=default, required=default is None, choices=sources,
                        help="which stage's checkpoint to load")
    parser.add_argument("--model-tag", default=None,
                        help=help_tag or "model tag of that stage (default: the largest d<N>)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")


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
