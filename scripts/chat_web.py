"""
Serve a chat model over HTTP: an OpenAI-compatible Chat Completions API and the chat UI that uses it.

    python -m scripts.chat_web -i sft                          # http://127.0.0.1:8000, one replica
    python -m scripts.chat_web -i sft --num-gpus 8 --host 0.0.0.0 --api-key "$KEY"   # a GPU node
    python -m scripts.chat_web -i sft --device-type cpu --num-slots 4                # a laptop
Then open http://127.0.0.1:8000 or point any OpenAI client at it:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<key or anything>")

Routes
    GET  /                       the chat UI (nanochat/ui.html); it talks to /v1/chat/completions
    POST /v1/chat/completions    Chat Completions: stream (SSE chunks, then `data: [DONE]`) or not;
                                 temperature, top_p, max_tokens / max_completion_tokens, stop, seed,
                                 n, stream_options.include_usage; extension: top_k (0 = off)
    GET  /v1/models, /v1/models/{id}
    GET  /health                 {"status": "ok"}; never needs the API key
    GET  /stats                  model, workers, active/queued rows, requests served, tokens, tokens/s

Batching. Each replica (one per GPU with --num-gpus) owns an Engine with --num-slots decoding slots
and one thread that calls engine.step() while it has work; concurrent requests are decoded together
(continuous batching) and a new request joins at the next step. A request goes to the replica with
the fewest rows in flight. A request whose rows would push a replica past num_slots + --max-queue
rows gets 429 with Retry-After at once. A client that disconnects, streaming or not, is cancelled
(engine.cancel) and its slots are freed at the next step; it does not count as served.

Tool calls (an extension of the chunk; plain clients can ignore it). When the model calls the
calculator (<|python_start|> expr <|python_end|>) and the engine writes back its result
(<|output_start|> result <|output_end|>), the stream carries, per choice:
    {"delta": {"content": "", "nanochat": {"part": "python", "call": 0, "text": "48/2"}}}
    {"delta": {"content": "24", "nanochat": {"part": "python_output", "call": 0, "text": "24"}}}
"call" numbers the calls of one choice from 0; a call's text may arrive over several chunks. The
expression stays out of delta.content, the result goes into it, so a plain client reads
"Natalia sold 48/2 = 24 clips" where the model wrote "Natalia sold 48/2 = " and called the tool.
A non-streaming reply has message.content (the same plain text) and message.nanochat.parts, the
reply as parts [{"type": "text" | "python" | "python_output", "text": ...}]. Send those parts back
as an assistant message's content (a list) to continue a conversation with its tool calls intact.

Validation. Every user mistake is a JSON 4xx in OpenAI's shape {"error": {"message", "type",
"param", "code"}} and the server keeps serving: malformed JSON, wrong types, unknown roles, an empty
conversation, one not ending on a user turn, roles that do not alternate, more than 500 messages,
a message over 8,000 characters or a conversation over 32,000, temperature outside [0, 2], top_k
outside [0, 200], top_p outside (0, 1], max_tokens or max_completion_tokens outside [1, 4096], n
outside [1, 8] (or above --num-slots), more than 4 stop strings, a body over 1 MiB (413), nested too
deeply or holding an integer over 4,300 digits, a prompt longer than the model's context, features
this server does not have (tools, logprobs, penalties, logit_bias, JSON mode), a POST that is not
Content-Type: application/json (415). A value quoted back in an error is cut to 100 characters. A
leading system (or developer) message is folded into the first user turn. Unknown fields and
"model" are ignored: every request is answered by the one model served. Requests that omit
temperature, top_k or max_tokens get --temperature, --top-k and --max-new-tokens.

Who may connect. On a loopback --host (the default 127.0.0.1) only requests whose Host header is
localhost, 127.0.0.1 or [::1] (any port) are answered (400 otherwise), which stops DNS rebinding:
a web page on another site cannot use a browser to reach this server. A --host such as 0.0.0.0
exposes the server: any Host is accepted, and the API key (--api-key or $NANOCHAT_API_KEY) is what
protects it: every route except /health and the UI page itself then needs
`Authorization: Bearer <key>` (401 otherwise); the UI asks for the key and keeps it in the browser.
A request's headers must arrive within --header-timeout seconds and its body within
--body-timeout more (else the connection is closed), and at most --max-connections are open at once
(more are answered 503). NOT covered: TLS, per-client connection and rate limits, slow readers of
long replies, per-user quotas, and timing side channels beyond the constant-time key comparison:
put a reverse proxy in front when --host exposes the server (README, "Serving on a network").

The app itself (replicas, routes, wire format) is nanochat/chat_server.py, built by build_app from
loaded models, so tests can run it in-process; the connection limits and the Host / Content-Type
checks are nanochat/chat_http.py; request validation and error bodies nanochat/chat_api.py.
Tests: tests/test_chat_web.py (API, limits, auth, batching, disconnects), tests/test_chat_guard.py
(Host, Content-Type, time-outs, connection cap), tests/test_chat_ui.py.
"""

import argparse
import os
import resource

import torch

from nanochat.chat_api import MAX_TOKENS_LIMIT, MAX_TOP_K
from nanochat.chat_http import ConnectionLimits, is_loopback, serve
from nanochat.chat_server import Replica, ServerSettings, build_app
from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import compute_init, decide_compute_dtype, setup_logging
from nanochat.flags import add_compute_flags, add_reply_flags, add_source_flags

parser = argparse.ArgumentParser(description="Serve a nanochat model: OpenAI-compatible API and chat UI.")
add_source_flags(parser, ("mid", "sft", "rl"), default="sft")
add_compute_flags(parser)
# serving
parser.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; a loopback one answers only to localhost Host names, "
                         "another (0.0.0.0) exposes the server: then set --api-key")
parser.add_argument("--port", type=int, default=8000, help="port to listen on")
parser.add_argument("--api-key", default=os.environ.get("NANOCHAT_API_KEY") or None,
                    help="require 'Authorization: Bearer <key>' (default: $NANOCHAT_API_KEY; unset: no key)")
parser.add_argument("--num-gpus", type=int, default=1,
                    help="replicas, one per GPU (on CPU several replicas share the cores: for testing)")
parser.add_argument("--num-slots", type=int, default=16, help="rows each replica decodes together")
parser.add_argument("--threads", type=int, default=None,
                    help="CPU: torch threads of the decode (default: $OMP_NUM_THREADS if set, else one fewer than the "
                         "cores: the HTTP loop keeps a core; web_bench on 2 cores: 1 thread streams 1.25-1.5x faster than 2)")
parser.add_argument("--max-queue", type=int, default=64,
                    help="rows that may wait for a slot per replica; beyond that requests get 429")
# connections
parser.add_argument("--header-timeout", type=float, default=10.0,
                    help="seconds a request's headers may take from its first byte; then the connection is closed")
parser.add_argument("--body-timeout", type=float, default=30.0,
                    help="seconds a request's body may take after its headers; then the connection is closed")
parser.add_argument("--max-connections", type=int, default=None,
                    help="open connections at most; more get 503 (default: 512, or fewer under a low ulimit -n)")
# generation defaults, for requests that do not say
add_reply_flags(parser, max_new_tokens=512, temperature=0.8, top_k=50)


def default_max_connections():
    """512, or fewer where `ulimit -n` leaves less room: connections beyond the cap are accepted in
    a batch of up to the listen backlog before they are refused (serve's backlog is at most the cap),
    so the cap is half of the file descriptors this process has not opened yet, less a margin."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 512
    in_use = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    return max(1, min(512, (soft - in_use - 32) // 2))


def main():
    args = parser.parse_args()
    for flag, value, lo, hi in (("--port", args.port, 0, 65535), ("--num-gpus", args.num_gpus, 1, 64),
                                ("--num-slots", args.num_slots, 1, 4096), ("--max-queue", args.max_queue, 0, 1 << 20),
                                ("--top-k", args.top_k, 0, MAX_TOP_K),
                                ("--max-new-tokens", args.max_new_tokens, 1, MAX_TOKENS_LIMIT),
                                ("--max-connections", 1 if args.max_connections is None else args.max_connections, 1, 1 << 20)):
        if not lo <= value <= hi:
            parser.error(f"{flag} must be in [{lo}, {hi}], got {value}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if not 0.0 <= args.temperature <= 2.0:
        parser.error(f"--temperature must be in [0, 2], got {args.temperature}")
    for flag, value in (("--header-timeout", args.header_timeout), ("--body-timeout", args.body_timeout)):
        if not 0.0 < value <= 3600.0:
            parser.error(f"{flag} must be in (0, 3600] seconds, got {value}")
    if args.api_key is not None and not args.api_key.strip():
        parser.error("--api-key is empty; pass a key or leave it (and NANOCHAT_API_KEY) unset")

    # model: one replica per device
    setup_logging()
    compute = compute_init(args.device_type)
    if args.num_gpus > 1 and compute.device_type == "cuda" and args.num_gpus > torch.cuda.device_count():
        parser.error(f"--num-gpus {args.num_gpus} but torch sees {torch.cuda.device_count()} CUDA devices")
    if args.num_gpus > 1 and compute.device_type == "mps":
        parser.error("--num-gpus > 1 needs CUDA (or CPU, for testing); MPS is one device")
    dtype, why = decide_compute_dtype(compute.device_type, args.dtype)
    threads = None
    if compute.device_type == "cpu":
        threads = args.threads or (None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) - 1))
        if threads:
            torch.set_num_threads(threads)
        print(f"chat_web: decode on {torch.get_num_threads()} CPU thread(s) of {os.cpu_count()} cores", flush=True)
    devices = [torch.device("cuda", i) if compute.device_type == "cuda" else compute.device for i in range(args.num_gpus)]
    replicas = []
    for i, device in enumerate(devices):
        try:
            model, tokenizer, meta = load_model(args.source, device, "eval", model_tag=args.model_tag, step=args.step,
                                                hf_path=args.hf_path)
        except (FileNotFoundError, CheckpointError, ValueError) as e:
            parser.exit(1, f"chat_web: cannot load the {args.source} checkpoint: {e}\n")
        replicas.append(Replica(i, model, tokenizer, device, args.num_slots, dtype, threads))
    local = is_loopback(args.host)
    settings = ServerSettings(model_id=f"nanochat-{args.source}-{meta['model_tag']}", source=args.source,
                              max_queue=args.max_queue, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, api_key=args.api_key, local_only=local)
    app = build_app(replicas, tokenizer, settings)
    if args.max_connections is None:
        args.max_connections = default_max_connections()

    print(f"chat_web: {settings.model_id} (step {meta['step']}) on {', '.join(str(d) for d in devices)}, "
          f"compute dtype {str(dtype).removeprefix('torch.')} ({why}), {args.num_slots} slots per replica, "
          f"max queue {args.max_queue} rows, API key {'required' if args.api_key else 'off'}")
    if local:
        print(f"chat_web: listening on {args.host} only; requests whose Host is not localhost, 127.0.0.1 or [::1] "
              "are refused (use --host to expose the server)")
    else:
        print(f"chat_web: --host {args.host} exposes the server: any Host name is accepted, and the API key is what "
              f"protects it{'' if args.api_key else ' (NO API KEY IS SET: anyone who can reach this port can use it)'}; "
              "put a reverse proxy with TLS in front (README, 'Serving on a network')")
    print(f"chat_web: headers within {args.header_timeout:g} s, bodies within {args.body_timeout:g} s, "
          f"at most {args.max_connections} connections")
    print(f"chat_web: open http://{args.host}:{args.port}/  (OpenAI base_url http://{args.host}:{args.port}/v1)", flush=True)
    serve(app, args.host, args.port, ConnectionLimits(args.header_timeout, args.body_timeout, args.max_connections))


if __name__ == "__main__":
    main()
