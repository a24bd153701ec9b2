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
Flags as in the README's flag table (--max-new-tokens; the old --max-tokens still works); --dtype
auto as the training stages decide it.

Tests: tests/test_chat_cli.py
"""

import argparse
import os
import signal
import sys

from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import autocast_ctx, compute_init, decide_compute_dtype
from nanochat.engine import Engine, SamplingParams
from nanochat.flags import add_compute_flags, add_reply_flags, add_source_flags
from nanochat.reply import ReplyParts

parser = argparse.ArgumentParser(description="Chat with a nanochat model in the terminal.")
add_source_flags(parser, ("mid", "sft", "rl"), default="sft")
add_compute_flags(parser)
# chat
parser.add_argument("-p", "--prompt", default=None, help="answer this one prompt and exit")
add_reply_flags(parser, max_new_tokens=512, temperature=0.6, top_k=50)
parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: keep the top tokens of this mass (1 = off)")
parser.add_argument("--seed", type=int, default=None, help="seed of the first reply's sampling (default: random)")
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
if args.max_new_tokens < 1:
    parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
if args.prompt is not None and not args.prompt.strip():
    parser.error("--prompt is empty")

compute = compute_init(args.device_type)
try:
    model, tokenizer, meta = load_model(args.source, compute.device, "eval", model_tag=args.model_tag, step=args.step,
                                        hf_path=args.hf_path)
except (FileNotFoundError, CheckpointError, ValueError) as e:
    parser.exit(1, f"chat_cli: cannot load the {args.source} checkpoint: {e}\n")
engine = Engine(model, tokenizer, num_slots=1)
autocast = autocast_ctx(compute.device_type, decide_compute_dtype(compute.device_type, args.dtype)[0])

color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
DIM, TOOL, RESULT, RESET = ("\033[2m", "\033[36m", "\033[1;32m", "\033[0m") if color else ("", "", "", "")
# what is written when the reply moves from one part to the next (nanochat/reply.py's parts)
SHOWN = {("text", "python"): f"{TOOL}[calc ", ("python", "text"): RESET,
         ("text", "python_output"): f"{TOOL} = {RESULT}", ("python_output", "text"): f"{RESET}{TOOL}]{RESET}"}


def write(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def reply(messages, seed):
    """Stream the assistant's reply to `messages`; returns its parts (what was written, also when stopped)."""
    prompt = tokenizer.render_for_reply(messages)
    if len(prompt) >= engine.max_seq_len:
        write(f"[the conversation is {len(prompt)} tokens, the model's context {engine.max_seq_len}: /clear to start over]\n")
        return None
    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                            top_p=None if args.top_p == 1.0 else args.top_p, seed=seed)
    rid = engine.add_request(prompt, params)
    # Ctrl-C only sets a flag, checked between steps: an interrupt inside a step could leave the engine half-updated
    stop = []
    previous = signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    parts, after_call, finish = ReplyParts(tokenizer), False, None
    try:
        with autocast:
            while finish is None:
                if stop:
                    engine.cancel(rid)
                for ev in engine.step():
                    if ev.finish_reason is not None:
                        finish = ev.finish_reason
                    before = parts.part
                    piece = parts.feed(ev.token, ev.text)
                    if after_call and parts.part != "python_output":  # the calculator refused the expression
                        write(f"{DIM} (no result)]{RESET}")
                    after_call = (before, parts.part) == ("python", "text")
                    write(SHOWN.get((before, parts.part), ""))
                    if piece is not None:
                        write(piece[2])
    finally:
        signal.signal(signal.SIGINT, previous)
    write(RESET)
    if finish == "cancelled":
        write(f"{DIM} [stopped]{RESET}")
    elif finish == "length":
        write(f"{DIM} [max tokens reached]{RESET}")
    write("\n")
    return parts.parts


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
