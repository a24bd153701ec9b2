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
rows gets 429 with Retry-After at once. A client that disconnects is cancelled (engine.cancel) and
its slots are freed at the next step.

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
outside [0, 200], top_p outside (0, 1], max_tokens outside [1, 4096], n outside [1, 8] (or above
--num-slots), more than 4 stop strings, a body over 1 MiB (413), a prompt longer than the model's context, features this
server does not have (tools, logprobs, penalties, logit_bias, JSON mode). A leading system (or
developer) message is folded into the first user turn. Unknown fields and "model" are ignored:
every request is answered by the one model served. Requests that omit temperature, top_k or
max_tokens get --temperature, --top-k and --max-tokens.

API key (--api-key or $NANOCHAT_API_KEY): every route except /health and the UI page itself needs
`Authorization: Bearer <key>` (401 otherwise); the UI asks for the key and keeps it in the browser.
NOT covered: TLS (put a reverse proxy in front when --host exposes the server), per-user quotas,
and timing side channels beyond the constant-time key comparison.

Request validation and error bodies: nanochat/chat_api.py.
Tests: tests/test_chat_web.py (API, limits, auth, batching, disconnects), tests/test_chat_ui.py.
"""

import argparse
import asyncio
import hmac
import json
import os
import threading
import time
import uuid
from contextlib import ExitStack

import torch
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from nanochat.chat_api import MAX_BODY_BYTES, MAX_TOKENS_LIMIT, MAX_TOP_K, RETRY_AFTER_S, ApiError, error_response, \
    parse_chat_request
from nanochat.checkpoint_manager import CheckpointError, load_model
from nanochat.common import compute_init, logger, setup_logging
from nanochat.engine import Engine, SamplingParams
from nanochat.flags import add_hf_path_flag

parser = argparse.ArgumentParser(description="Serve a nanochat model: OpenAI-compatible API and chat UI.")
# checkpoint
parser.add_argument("-i", "--source", default="sft", choices=["mid", "sft", "rl"], help="which stage's checkpoint")
parser.add_argument("--model-tag", default=None, help="model tag (default: the largest model of that stage)")
parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
add_hf_path_flag(parser)
# serving
parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes the server)")
parser.add_argument("--port", type=int, default=8000, help="port to listen on")
parser.add_argument("--api-key", default=os.environ.get("NANOCHAT_API_KEY") or None,
                    help="require 'Authorization: Bearer <key>' (default: $NANOCHAT_API_KEY; unset: no key)")
parser.add_argument("--num-gpus", type=int, default=1,
                    help="replicas, one per GPU (on CPU several replicas share the cores: for testing)")
parser.add_argument("--num-slots", type=int, default=16, help="rows each replica decodes together")
parser.add_argument("--max-queue", type=int, default=64,
                    help="rows that may wait for a slot per replica; beyond that requests get 429")
# generation defaults, for requests that do not say
parser.add_argument("--temperature", type=float, default=0.8, help="default sampling temperature")
parser.add_argument("--top-k", type=int, default=50, help="default top-k (0 = off)")
parser.add_argument("--max-tokens", type=int, default=512, help="default max tokens per reply")
# compute
parser.add_argument("--device-type", default="", choices=["", "cuda", "mps", "cpu"], help="device (default: autodetect)")
parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="autocast dtype on CUDA")
args = parser.parse_args()


for flag, value, lo, hi in (("--port", args.port, 0, 65535), ("--num-gpus", args.num_gpus, 1, 64),
                            ("--num-slots", args.num_slots, 1, 4096), ("--max-queue", args.max_queue, 0, 1 << 20),
                            ("--top-k", args.top_k, 0, MAX_TOP_K), ("--max-tokens", args.max_tokens, 1, MAX_TOKENS_LIMIT)):
    if not lo <= value <= hi:
        parser.error(f"{flag} must be in [{lo}, {hi}], got {value}")
if not 0.0 <= args.temperature <= 2.0:
    parser.error(f"--temperature must be in [0, 2], got {args.temperature}")
if args.api_key is not None and not args.api_key.strip():
    parser.error("--api-key is empty; pass a key or leave it (and NANOCHAT_API_KEY) unset")

# -----------------------------------------------------------------------------
# replicas: one engine per device, stepped by its own thread


class Replica:
    """A model and its Engine on one device, decoded by one thread.

    Handlers (on the asyncio loop) submit requests and receive each step's events for their request
    through an asyncio.Queue, fed with loop.call_soon_threadsafe. `rows` counts the samples of the
    requests in flight (only the loop thread changes it), which decides routing and 429s."""

    def __init__(self, index, model, tokenizer, device):
        self.index, self.device = index, device
        self.engine = Engine(model, tokenizer, num_slots=args.num_slots)
        self.context = model.config.sequence_len
        self.lock = threading.Lock()  # guards `streams` between submit and the worker's dispatch
        self.streams = {}  # request id -> (loop, asyncio.Queue)
        self.wake = threading.Event()
        self.rows = 0
        self.requests_served = 0
        self.tokens_generated = 0
        self.buckets = {}  # int(second) -> tokens generated in it (the last RATE_WINDOW_S seconds)
        self.thread = threading.Thread(target=self._run, name=f"engine-{index}", daemon=True)
        self.thread.start()

    def submit(self, prompt, params, loop):
        queue = asyncio.Queue()
        with self.lock:  # the worker cannot dispatch this request's events before it is registered
            rid = self.engine.add_request(prompt, params)
            self.streams[rid] = (loop, queue)
        self.wake.set()
        return rid, queue

    def release(self, rid, cancel):
        with self.lock:
            self.streams.pop(rid, None)
        if cancel:
            self.engine.cancel(rid)
            self.wake.set()  # step once more so the slots are freed now, not at the next request

    def _run(self):
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode())  # thread-local, so entered in this thread
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                stack.enter_context(torch.autocast("cuda", dtype=getattr(torch, args.dtype)))
            while True:
                self.wake.clear()  # cleared before the check: a submit after it sets it again
                if not self.engine.has_work():
                    self.wake.wait()
                    continue
                try:
                    events = self.engine.step()
                except Exception as e:  # a bug or out of memory: fail the requests in flight, keep serving
                    logger.exception(f"replica {self.index}: engine step failed")
                    with self.lock:
                        streams = list(self.streams.items())
                    for rid, (loop, queue) in streams:
                        loop.call_soon_threadsafe(queue.put_nowait, e)
                        self.engine.cancel(rid)
                    time.sleep(0.1)
                    continue
                by_request = {}
                for ev in events:
                    by_request.setdefault(ev.request_id, []).append(ev)
                with self.lock:
                    targets = [(self.streams.get(rid), evs) for rid, evs in by_request.items()]
                for target, evs in targets:
                    if target is not None:
                        loop, queue = target
                        loop.call_soon_threadsafe(queue.put_nowait, evs)
                self.tokens_generated += len(events)
                second = int(time.time())
                self.buckets[second] = self.buckets.get(second, 0) + len(events)
                for old in [s for s in self.buckets if s < second - RATE_WINDOW_S]:
                    del self.buckets[old]

    def tokens_per_s(self, now):
        counts = dict(self.buckets)  # a copy: the worker thread adds keys
        window = max(1.0, min(RATE_WINDOW_S, now - START_TIME))
        return sum(c for s, c in counts.items() if s > now - window) / window


RATE_WINDOW_S = 10


class Choice:
    """Decoding state of one sample: which part the tokens belong to, and the reply so far."""

    def __init__(self):
        self.part, self.calls, self.boundary = "text", 0, True
        self.parts = []  # [{"type", "text"}], as tokenizer.render_conversation reads assistant content
        self.finish_reason = None
        self.tokens = 0

    def feed(self, ev):
        """One TokenEvent -> a (part, call, text) piece, or None (a marker token, an empty delta)."""
        self.tokens += ev.token >= 0  # a cancelled sample's last event has no token (-1)
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
        marker = MARKERS.get(ev.token)
        if marker is not None:
            self.part, self.boundary = marker, True  # the next text opens a new part
            self.calls += marker == "python"
            return None
        if not ev.text:
            return None
        if self.boundary:
            self.parts.append({"type": self.part, "text": ev.text})
            self.boundary = False
        else:
            self.parts[-1]["text"] += ev.text
        return self.part, self.calls - 1, ev.text

    def content(self):
        """What a plain client reads: text and tool results, without the tool's expressions."""
        return "".join(p["text"] for p in self.parts if p["type"] != "python")


class Job:
    """One chat completion in flight on a replica."""

    def __init__(self, replica, prompt, params):
        self.replica, self.n, self.prompt_tokens = replica, params.n, len(prompt)
        self.rid, self.queue = replica.submit(prompt, params, asyncio.get_running_loop())
        replica.rows += self.n
        self.choices = [Choice() for _ in range(self.n)]
        self.closed = False

    @property
    def done(self):
        return all(c.finish_reason is not None for c in self.choices)

    async def pieces(self):
        """Wait for events, then -> [(index, part, call, text)] with adjacent pieces merged, plus the
        indices of the choices that finished."""
        items = [await self.queue.get()]
        while not self.queue.empty():  # a slow consumer takes several steps' events at once
            items.append(self.queue.get_nowait())
        pieces, finished = [], []
        for item in items:
            if isinstance(item, Exception):
                raise ApiError(500, f"the engine failed while generating: {type(item).__name__}: {item}",
                               type="server_error", code="engine_error")
            for ev in item:
                choice = self.choices[ev.index]
                piece = choice.feed(ev)
                if piece is not None:
                    if pieces and pieces[-1][:3] == (ev.index, *piece[:2]):
                        pieces[-1] = (ev.index, piece[0], piece[1], pieces[-1][3] + piece[2])
                    else:
                        pieces.append((ev.index, *piece))
                if ev.finish_reason is not None:
                    finished.append(ev.index)
        return pieces, finished

    def usage(self):
        completion = sum(c.tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def close(self):
        """Called exactly once when the handler is done: frees the rows, cancels if unfinished."""
        if self.closed:
            return
        self.closed = True
        self.replica.release(self.rid, cancel=not self.done)
        self.replica.rows -= self.n
        if self.done:
            self.replica.requests_served += 1


# -----------------------------------------------------------------------------
# model: one replica per device

setup_logging()
compute = compute_init(args.device_type)
if args.num_gpus > 1 and compute.device_type == "cuda" and args.num_gpus > torch.cuda.device_count():
    parser.error(f"--num-gpus {args.num_gpus} but torch sees {torch.cuda.device_count()} CUDA devices")
if args.num_gpus > 1 and compute.device_type == "mps":
    parser.error("--num-gpus > 1 needs CUDA (or CPU, for testing); MPS is one device")
devices = [torch.device("cuda", i) if compute.device_type == "cuda" else compute.device for i in range(args.num_gpus)]
replicas = []
for i, device in enumerate(devices):
    try:
        model, tokenizer, meta = load_model(args.source, device, "eval", model_tag=args.model_tag, step=args.step,
                                            hf_path=args.hf_path)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        parser.exit(1, f"chat_web: cannot load the {args.source} checkpoint: {e}\n")
    replicas.append(Replica(i, model, tokenizer, device))
model_tag = meta["model_tag"]  # the tag load_model resolved
MODEL_ID = f"nanochat-{args.source}-{model_tag}"
sp = tokenizer.encode_special
MARKERS = {sp("<|python_start|>"): "python", sp("<|python_end|>"): "text",
           sp("<|output_start|>"): "python_output", sp("<|output_end|>"): "text"}
START_TIME = time.time()
with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nanochat", "ui.html"),
          encoding="utf-8") as f:
    UI_HTML = f.read()

# -----------------------------------------------------------------------------
# HTTP


async def check_api_key(request: Request):
    if args.api_key is None or request.url.path in ("/", "/health"):
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), args.api_key.encode()):
        what = "is wrong" if scheme.lower() == "bearer" else "is missing"
        raise ApiError(401, f"the API key {what}: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(check_api_key)])


@app.exception_handler(ApiError)
async def api_error_handler(request, e):
    return error_response(e.status, e.message, e.param, e.code, e.type, e.headers)


@app.exception_handler(StarletteHTTPException)
async def http_error_handler(request, e):
    messages = {404: f"no route {request.method} {request.url.path}; see /v1/chat/completions, /v1/models, "
                     "/health, /stats", 405: f"{request.method} is not allowed on {request.url.path}"}
    return error_response(e.status_code, messages.get(e.status_code, str(e.detail)), code=None)


@app.exception_handler(Exception)
async def internal_error_handler(request, e):
    logger.exception(f"{request.method} {request.url.path} failed")
    return error_response(500, f"internal server error ({type(e).__name__}); see the server log", type="server_error")


async def read_json(request):
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"the request body is {int(length)} bytes, at most {MAX_BODY_BYTES}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the request body is over {MAX_BODY_BYTES} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                       code="invalid_json") from None


def chunk(cid, created, choices, usage=None, with_usage=False):
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": MODEL_ID,
            "system_fingerprint": None, "choices": choices}
    if with_usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def delta(part, call, text):
    if part == "text":
        return {"content": text}
    return {"content": text if part == "python_output" else "", "nanochat": {"part": part, "call": call, "text": text}}


async def stream_reply(job, cid, created, include_usage):
    try:
        for i in range(job.n):
            yield chunk(cid, created, [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                        "finish_reason": None}], with_usage=include_usage)
        while not job.done:
            try:
                pieces, finished = await job.pieces()
            except ApiError as e:
                yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'param': None, 'code': e.code}})}\n\n"
                return
            for i, part, call, text in pieces:
                yield chunk(cid, created, [{"index": i, "delta": delta(part, call, text), "logprobs": None,
                                            "finish_reason": None}], with_usage=include_usage)
            for i in finished:
                yield chunk(cid, created, [{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": job.choices[i].finish_reason}], with_usage=include_usage)
        if include_usage:
            yield chunk(cid, created, [], job.usage(), with_usage=True)
        yield "data: [DONE]\n\n"
    finally:  # also on a disconnect: Starlette cancels this generator, and the engine request with it
        job.close()


class JobStream(StreamingResponse):
    """Closes its job however the response ends, even when the client leaves before the stream starts
    (Starlette then never enters the generator, so its `finally` would not run)."""

    def __init__(self, job, content, **kwargs):
        super().__init__(content, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.close()


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    messages, sampling, stream, include_usage = parse_chat_request(await read_json(request), args.max_tokens,
                                                                   args.temperature, args.top_k)
    try:
        prompt = tokenizer.render_for_reply(messages)
    except ValueError as e:
        raise ApiError(400, f"cannot render the conversation: {e}", "messages") from None
    replica = min(replicas, key=lambda r: r.rows)
    n = sampling["n"]
    if n > args.num_slots:
        raise ApiError(400, f"n={n} samples need {n} slots; this server has {args.num_slots} per replica", "n")
    if replica.rows + n > args.num_slots + args.max_queue:
        raise ApiError(429, f"the server is busy ({replica.rows} rows in flight per replica, at most "
                            f"{args.num_slots + args.max_queue}); retry in a few seconds", type="rate_limit_error",
                       code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)})
    room = replica.context - len(prompt)
    if room < 1:
        raise ApiError(400, f"the conversation is {len(prompt)} tokens; the model's context is {replica.context} "
                            "tokens for prompt and reply together. Shorten it or start a new chat",
                       "messages", "context_length_exceeded")
    sampling["max_tokens"] = min(sampling["max_tokens"], room)  # the reply ends with finish_reason "length"
    try:
        job = Job(replica, prompt, SamplingParams(**sampling))
    except ValueError as e:
        raise ApiError(400, f"the engine refused the request: {e}", None, "invalid_request") from None
    cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if stream:
        return JobStream(job, stream_reply(job, cid, created, include_usage), media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        while not job.done:
            try:
                await asyncio.wait_for(job.pieces(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse({}, status_code=499)  # nobody reads it; close() cancels the request
    finally:
        job.close()
    choices = [{"index": i, "message": {"role": "assistant", "content": c.content(), "refusal": None,
                                        "nanochat": {"parts": c.parts}},
                "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(job.choices)]
    return {"id": cid, "object": "chat.completion", "created": created, "model": MODEL_ID,
            "system_fingerprint": None, "choices": choices, "usage": job.usage()}


def model_card():
    return {"id": MODEL_ID, "object": "model", "created": int(START_TIME), "owned_by": "nanochat",
            "context_length": replicas[0].context}


@app.get("/v1/models")
async def list_models():
    return {"object": "list", "data": [model_card()]}


@app.get("/v1/models/{model_id}")
async def get_model(model_id: str):
    if model_id != MODEL_ID:
        raise ApiError(404, f"model {model_id!r} is not served here; this server serves {MODEL_ID!r}",
                       "model", "model_not_found")
    return model_card()


@app.get("/health")
async def health():
    dead = [r.index for r in replicas if not r.thread.is_alive()]
    if dead:
        return error_response(503, f"the engine thread of replica(s) {dead} died; see the server log", type="server_error")
    return {"status": "ok"}


@app.get("/stats")
async def stats():
    now = time.time()
    workers = [{"replica": r.index, "device": str(r.device), "slots": args.num_slots, "active": r.engine.num_active(),
                "queued": r.engine.num_waiting(), "rows_in_flight": r.rows, "requests_served": r.requests_served,
                "tokens_generated": r.tokens_generated, "tokens_per_s": round(r.tokens_per_s(now), 1)} for r in replicas]
    total = lambda key: sum(w[key] for w in workers)  # noqa: E731
    return {"model": MODEL_ID, "source": args.source, "uptime_s": round(now - START_TIME, 1),
            "workers": workers, "num_workers": len(workers), "active": total("active"), "queued": total("queued"),
            "requests_served": total("requests_served"), "tokens_generated": total("tokens_generated"),
            "tokens_per_s": round(sum(w["tokens_per_s"] for w in workers), 1)}


@app.get("/", response_class=HTMLResponse)
async def ui():
    # a per-response nonce: the page's own script runs, anything injected into the page would not
    nonce = uuid.uuid4().hex
    csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return HTMLResponse(UI_HTML.replace("__CSP_NONCE__", nonce), headers={"Content-Security-Policy": csp})


print(f"chat_web: {MODEL_ID} on {', '.join(str(d) for d in devices)}, {args.num_slots} slots per replica, "
      f"max queue {args.max_queue} rows, API key {'required' if args.api_key else 'off'}")
print(f"chat_web: open http://{args.host}:{args.port}/  (OpenAI base_url http://{args.host}:{args.port}/v1)", flush=True)
uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
