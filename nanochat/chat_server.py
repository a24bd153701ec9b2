"""
The chat server behind scripts/chat_web.py: replicas that decode requests (one Engine and one thread
each) and the FastAPI app that serves them (the routes and the wire format are described in
scripts/chat_web.py's docstring).

    replicas = [Replica(0, model, tokenizer, device, num_slots=16, dtype=torch.float32)]
    app = build_app(replicas, tokenizer, ServerSettings(model_id="nanochat-sft-d20", source="sft"))
    nanochat.chat_http.serve(app, "127.0.0.1", 8000, ConnectionLimits())   # or any ASGI server / client

build_app wraps the FastAPI app in nanochat.chat_http.RequestGuard (Host and Content-Type checks).
Request validation and error bodies: nanochat/chat_api.py; reply parts: nanochat/reply.py.
Tests: tests/test_chat_web.py (over HTTP, and in-process through the ASGI app), tests/test_chat_guard.py.
"""

import asyncio
import hmac
import json
import os
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from nanochat.chat_api import RETRY_AFTER_S, ApiError, echo, error_response, parse_chat_request, read_json
from nanochat.chat_http import RequestGuard
from nanochat.common import autocast_ctx, logger
from nanochat.engine import Engine, SamplingParams
from nanochat.reply import ReplyParts

RATE_WINDOW_S = 10
UI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.html")  # markup and style
UI_SCRIPT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.js")  # behaviour, inlined into it


@dataclass
class ServerSettings:
    """What build_app needs besides the replicas: the served model's name and the request defaults."""
    model_id: str
    source: str
    max_queue: int = 64          # rows that may wait for a slot per replica; beyond, 429
    max_new_tokens: int = 512    # defaults for requests that leave them out
    temperature: float = 0.8
    top_k: int = 50
    api_key: str | None = None   # None: no key
    local_only: bool = True      # refuse Host names other than localhost (a server on a loopback address)


# -----------------------------------------------------------------------------
# replicas: one engine per device, stepped by its own thread


class Replica:
    """A model and its Engine on one device, decoded by one thread.

    Handlers (on the asyncio loop) submit requests and receive each step's events for their request
    through an asyncio.Queue, fed with loop.call_soon_threadsafe. `rows` counts the samples of the
    requests in flight (only the loop thread changes it), which decides routing and 429s."""

    def __init__(self, index, model, tokenizer, device, num_slots, dtype, threads=None):
        self.index, self.device, self.num_slots, self.dtype, self.threads = index, device, num_slots, dtype, threads
        self.engine = Engine(model, tokenizer, num_slots=num_slots)
        self.context = model.config.sequence_len
        self.lock = threading.Lock()  # guards `streams` between submit and the worker's dispatch
        self.streams = {}  # request id -> (loop, asyncio.Queue)
        self.wake = threading.Event()
        self.rows = 0
        self.requests_served = 0
        self.tokens_generated = 0
        self.started = time.time()
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
            if self.threads:  # CPU: the intra-op threads of this thread's ops
                torch.set_num_threads(self.threads)
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            stack.enter_context(autocast_ctx(self.device.type, self.dtype))
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
        window = max(1.0, min(RATE_WINDOW_S, now - self.started))
        return sum(c for s, c in counts.items() if s > now - window) / window

    def stats(self, now):
        return {"replica": self.index, "device": str(self.device), "slots": self.num_slots,
                "active": self.engine.num_active(), "queued": self.engine.num_waiting(), "rows_in_flight": self.rows,
                "requests_served": self.requests_served, "tokens_generated": self.tokens_generated,
                "tokens_per_s": round(self.tokens_per_s(now), 1)}


class Choice:
    """Decoding state of one sample: its parts (nanochat/reply.py), finish reason and token count."""

    def __init__(self, tokenizer):
        self.reply = ReplyParts(tokenizer)
        self.finish_reason = None
        self.tokens = 0

    def feed(self, ev):
        """One TokenEvent -> a (part, call, text) piece, or None (a marker token, an empty delta)."""
        self.tokens += ev.token >= 0  # a cancelled sample's last event has no token (-1)
        if ev.finish_reason is not None:
            self.finish_reason = ev.finish_reason
        return self.reply.feed(ev.token, ev.text)


class Job:
    """One chat completion in flight on a replica."""

    def __init__(self, replica, prompt, params, tokenizer):
        self.replica, self.n, self.prompt_tokens = replica, params.n, len(prompt)
        self.rid, self.queue = replica.submit(prompt, params, asyncio.get_running_loop())
        replica.rows += self.n
        self.choices = [Choice(tokenizer) for _ in range(self.n)]
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
                piece = self.choices[ev.index].feed(ev)
                if piece is not None:
                    if pieces and pieces[-1][:3] == (ev.index, *piece[:2]):
                        pieces[-1] = (ev.index, piece[0], piece[1], pieces[-1][3] + piece[2])
                    else:
                        pieces.append((ev.index, *piece))
                if ev.finish_reason is not None:
                    finished.append(ev.index)
        return pieces, finished

    async def finish(self):
        while not self.done:
            await self.pieces()

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


async def until_disconnected(request):
    """Returns once the client has gone (the body is read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# -----------------------------------------------------------------------------
# the wire format of replies


def chunk(model_id, cid, created, choices, usage=None, with_usage=False):
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
            "system_fingerprint": None, "choices": choices}
    if with_usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


def delta(part, call, text):
    if part == "text":
        return {"content": text}
    return {"content": text if part == "python_output" else "", "nanochat": {"part": part, "call": call, "text": text}}


async def stream_reply(job, model_id, cid, created, include_usage):
    def event(choices, **kwargs):
        return chunk(model_id, cid, created, choices, with_usage=include_usage, **kwargs)
    try:
        for i in range(job.n):
            yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        while not job.done:
            try:
                pieces, finished = await job.pieces()
            except ApiError as e:
                yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.type, 'param': None, 'code': e.code}})}\n\n"
                return
            for i, part, call, text in pieces:
                yield event([{"index": i, "delta": delta(part, call, text), "logprobs": None, "finish_reason": None}])
            for i in finished:
                yield event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": job.choices[i].finish_reason}])
        if include_usage:
            yield chunk(model_id, cid, created, [], job.usage(), with_usage=True)
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


# -----------------------------------------------------------------------------
# the app


def build_app(replicas, tokenizer, settings):
    """The ASGI app serving `replicas` (started Replica objects, all of one model) with `tokenizer`."""
    num_slots = replicas[0].num_slots
    model_id, started = settings.model_id, time.time()
    with open(UI_PATH, encoding="utf-8") as f, open(UI_SCRIPT_PATH, encoding="utf-8") as js:
        ui_html = f.read().replace("__UI_SCRIPT__", js.read().rstrip("\n"))

    async def check_api_key(request: Request):
        if settings.api_key is None or request.url.path in ("/", "/health"):
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            what = "is wrong" if scheme.lower() == "bearer" else "is missing"
            raise ApiError(401, f"the API key {what}: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, openapi_url=None,
                  dependencies=[Depends(check_api_key)])
    app.add_middleware(RequestGuard, local_only=settings.local_only)

    @app.exception_handler(ApiError)
    async def api_error_handler(request, e):
        return error_response(e.status, e.message, e.param, e.code, e.type, e.headers)

    @app.exception_handler(ClientDisconnect)
    async def client_gone_handler(request, e):
        return Response(status_code=499)  # the client left mid-body: nobody reads this, nothing to log

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(request, e):
        path = echo(request.url.path)
        messages = {404: f"no route {request.method} {path}; see /v1/chat/completions, /v1/models, /health, /stats",
                    405: f"{request.method} is not allowed on {path}"}
        return error_response(e.status_code, messages.get(e.status_code, str(e.detail)), code=None)

    @app.exception_handler(Exception)
    async def internal_error_handler(request, e):
        logger.exception(f"{request.method} {request.url.path} failed")
        return error_response(500, f"internal server error ({type(e).__name__}); see the server log", type="server_error")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        messages, sampling, stream, include_usage = parse_chat_request(
            await read_json(request), settings.max_new_tokens, settings.temperature, settings.top_k)
        try:
            prompt = tokenizer.render_for_reply(messages)
        except ValueError as e:
            raise ApiError(400, f"cannot render the conversation: {e}", "messages") from None
        replica = min(replicas, key=lambda r: r.rows)
        n = sampling["n"]
        if n > num_slots:
            raise ApiError(400, f"n={n} samples need {n} slots; this server has {num_slots} per replica", "n")
        if replica.rows + n > num_slots + settings.max_queue:
            raise ApiError(429, f"the server is busy ({replica.rows} rows in flight per replica, at most "
                                f"{num_slots + settings.max_queue}); retry in a few seconds", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(RETRY_AFTER_S)})
        room = replica.context - len(prompt)
        if room < 1:
            raise ApiError(400, f"the conversation is {len(prompt)} tokens; the model's context is {replica.context} "
                                "tokens for prompt and reply together. Shorten it or start a new chat",
                           "messages", "context_length_exceeded")
        sampling["max_tokens"] = min(sampling["max_tokens"], room)  # the reply ends with finish_reason "length"
        try:
            job = Job(replica, prompt, SamplingParams(**sampling), tokenizer)
        except ValueError as e:
            raise ApiError(400, f"the engine refused the request: {e}", None, "invalid_request") from None
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if stream:
            return JobStream(job, stream_reply(job, model_id, cid, created, include_usage),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        # not streamed: the reply races the client's disconnect, so a client that leaves frees its slots at once
        work, gone = asyncio.ensure_future(job.finish()), asyncio.ensure_future(until_disconnected(request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                return Response(status_code=499)  # nobody reads it; close() cancels the request
            work.result()  # the engine's failure, if any
        finally:
            for task in (work, gone):
                task.cancel()
            job.close()
        choices = [{"index": i, "message": {"role": "assistant", "content": c.reply.text(), "refusal": None,
                                            "nanochat": {"parts": c.reply.parts}},
                    "logprobs": None, "finish_reason": c.finish_reason} for i, c in enumerate(job.choices)]
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_id,
                "system_fingerprint": None, "choices": choices, "usage": job.usage()}

    def model_card():
        return {"id": model_id, "object": "model", "created": int(started), "owned_by": "nanochat",
                "context_length": replicas[0].context}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str):
        if name != model_id:
            raise ApiError(404, f"model {echo(name)} is not served here; this server serves {model_id!r}",
                           "model", "model_not_found")
        return model_card()

    @app.get("/health")
    async def health():
        dead = [r.index for r in replicas if not r.thread.is_alive()]
        if dead:
            return error_response(503, f"the engine thread of replica(s) {dead} died; see the server log",
                                  type="server_error")
        return {"status": "ok"}

    @app.get("/stats")
    async def stats():
        now = time.time()
        workers = [r.stats(now) for r in replicas]
        total = lambda key: sum(w[key] for w in workers)  # noqa: E731
        return {"model": model_id, "source": settings.source, "uptime_s": round(now - started, 1),
                "workers": workers, "num_workers": len(workers), "active": total("active"), "queued": total("queued"),
                "requests_served": total("requests_served"), "tokens_generated": total("tokens_generated"),
                "tokens_per_s": round(sum(w["tokens_per_s"] for w in workers), 1)}

    @app.get("/", response_class=HTMLResponse)
    async def ui():
        # a per-response nonce: the page's own script runs, anything injected into the page would not
        nonce = uuid.uuid4().hex
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; img-src data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(ui_html.replace("__CSP_NONCE__", nonce), headers={"Content-Security-Policy": csp})

    return app
