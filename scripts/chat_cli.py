"""
Chat with a model in the terminal; each reply is streamed as it is generated.

    python -m scripts.chat_cli                          # the sft model, a multi-turn chat
    python -m scripts.chat_cli -i rl --temperature 0    # greedy replies from the RL model
    python -m scripts.chat_cli -p "What is 12 * 34?"    # one prompt, one reply, exit
    python -m scripts.chat_cli --device-type cpu        # no GPU needed for a small model

In the chat: /clear starts a new conversation, /quit (or Ctrl-D) leaves, Ctrl-C stops the reply
being written and keeps the conversation (the partial reply stays in it). Calculator calls are
shown apart from the text, as [calc 6*7 = 42] (coloured when the output is a terminal and NO_COLOR
is unset); the model writes the expression, the engine the result.
Input is read line by line, so a conversation can also be piped in (one user message per line).

Tests: tests/test_chat_cli.py
"""

import argparse
import os
import signal
import sys
from contextlib import nullcontext

import torch

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import compute_init
from nanochat.engine import Engine, SamplingParams
from nanochat.flags import add_hf_path_flag

parser = argparse.ArgumentParser(description="Chat with a nanochat model in the terminal.")
# checkpoint
parser.add_argument("-i", "--source", default="sft", choices=["mid", "sft", "rl"], help="which stage's checkpoint")
parser.add_argument("--model-tag", default=None, help="model tag (default: the largest model of that stage)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
add_hf_path_flag(parser)
# chat
parser.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
parser.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
parser.add_argument("--top-k", type=int, default=50, help="top-k sampling (0 = off)")
parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens of this mass (1 = off)")
parser.add_argument("--max-tokens", type=int, default=512, help="most tokens per reply")
parser.add_argument("--seed", type=int, default=None, help="seed of the first reply's sampling (default: random)")
# compute
parser.add_argument("--device-type", default="", choices=["", "cuda", "mps", "cpu"], help="device (default: autodetect)")
parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="autocast dtype on CUDA")
args = parser.parse_args()
# bytes that are not valid in the locale's encoding (invalid UTF-8 piped in, a reply's emoji under
# LANG=C) are replaced, never a UnicodeError that ends the conversation
for stream in (sys.stdin, sys.stdout):
    stream.reconfigure(errors="replace")
if not 0.0 <= args.temperature <= 2.0:
    parser.error(f"--temperature must be in [0, 2], got {args.temperature}")
if not 0 <= args.top_k <= 200:
    parser.error(f"--top-k must be in [0, 200], got {args.top_k}")
if not 0.0 < args.top_p <= 1.0:
    parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
if args.max_tokens < 1:
    parser.error(f"--max-tokens must be at least 1, got {args.max_tokens}")
if args.prompt is not None and not args.prompt.strip():
    parser.error("--prompt is empty")

compute = compute_init(args.device_type)
try:
    model, tokenizer, meta = load_model(args.source, compute.device, "eval", model_tag=args.model_tag, step=args.step,
                                        hf_path=args.hf_path)
except (FileNotFoundError, CheckpointError, ValueError) as e:
    parser.exit(1, f"chat_cli: cannot load the {args.source} checkpoint: {e}\n")
engine = Engine(model, tokenizer, num_slots=1)
autocast = torch.autocast("cuda", dtype=getattr(torch, args.dtype)) if compute.device_type == "cuda" else nullcontext()

sp = tokenizer.encode_special
PYTHON_START, PYTHON_END = sp("<|python_start|>"), sp("<|python_end|>")
OUTPUT_START, OUTPUT_END = sp("<|output_start|>"), sp("<|output_end|>")
color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
DIM, TOOL, RESULT, RESET = ("\033[2m", "\033[36m", "\033[1;32m", "\033[0m") if color else ("", "", "", "")


def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def reply(messages, seed):
    """Stream the assistant's reply to `messages`; returns its parts (what was written, also when stopped)."""
    prompt = tokenizer.render_for_reply(messages)
    if len(prompt) >= engine.max_seq_len:
        write(f"[the conversation is {len(prompt)} tokens, the model's context {engine.max_seq_len}: /clear to start over]\n")
        return None
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k or None,
                            top_p=None if args.top_p == 1.0 else args.top_p, seed=seed)
    rid = engine.add_request(prompt, params)
    # Ctrl-C only sets a flag, checked between steps: an interrupt inside a step could leave the engine half-updated
    stop = []
    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    parts, part, after_call, finish = [], "text", False, None
    try:
        with autocast:
            while finish is None:
                if stop:
                    engine.cancel(rid)
                for ev in engine.step():
                    if ev.finish_reason is not None:
                        finish = ev.finish_reason
                    if after_call and ev.token != OUTPUT_START:  # the calculator refused the expression
                        write(f"{DIM} (no result)]{RESET}")
                    after_call = False
                    if ev.token == PYTHON_START:
                        part = "python"
                        write(f"{TOOL}[calc ")
                        parts.append({"type": part, "text": ""})
                    elif ev.token == PYTHON_END:
                        part, after_call = "text", True
                        write(RESET)
                    elif ev.token == OUTPUT_START:
                        part = "python_output"
                        write(f"{TOOL} = {RESULT}")
                        parts.append({"type": part, "text": ""})
                    elif ev.token == OUTPUT_END:
                        part = "text"
                        write(f"{RESET}{TOOL}]{RESET}")
                    elif ev.text:
                        if part == "text" and (not parts or parts[-1]["type"] != "text"):
                            parts.append({"type": "text", "text": ""})
                        parts[-1]["text"] += ev.text
                        write(ev.text)
    finally:
        signal.signal(signal.SIGINT, previous)
    write(RESET)
    if finish == "cancelled":
        write(f"{DIM} [stopped]{RESET}")
    elif finish == "length":
        write(f"{DIM} [max tokens reached]{RESET}")
    write("\n")
    return parts


if args.prompt is not None:
    reply([{"role": "user", "content": args.prompt}], args.seed)
    sys.exit(0)

print(f"nanochat ({args.source}) · /clear new conversation · /quit leave · Ctrl-C stops a reply")
messages, seed = [], args.seed
while True:
    try:
        text = input(f"\n{DIM}you>{RESET} " if sys.stdin.isatty() else "")
    except EOFError:
        break
    except KeyboardInterrupt:
        print("\n(type /quit or press Ctrl-D to leave)")
        continue
    text = text.strip()
    if not text:
        continue
    if text in ("/quit", "/exit"):
        break
    if text == "/clear":
        messages = []
        print("[new conversation]")
        continue
    if text.startswith("/"):
        print(f"[unknown command {text.split()[0]}; the commands are /clear and /quit]")
        continue
    messages.append({"role": "user", "content": text})
    if not sys.stdin.isatty():
        print(f"you> {text}")  # piped input is not echoed by a terminal
    write(f"{DIM}nanochat>{RESET} ")
    parts = reply(messages, seed)
    seed = None if seed is None else seed + 1
    if parts is None:
        messages.pop()
    else:
        messages.append({"role": "assistant", "content": parts or ""})
