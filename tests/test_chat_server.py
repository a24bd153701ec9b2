"""
The chat server's app in-process (nanochat/chat_server.build_app over replicas built here, driven as
ASGI by a small driver: no socket, no subprocess), and the reply parts of nanochat/reply.py:
  - the parts and the reply text of the scripted reply, from the engine's events and from its
    finished tokens, are SCRIPTED_PARTS and SCRIPTED_CONTENT; the app answers with them
  - a greedy reply of the random model through the app is the engine's, run alone
  - a client that leaves mid-body is answered quietly: no 500, nothing logged, the app keeps serving
  - an exposed server (local_only False) answers any Host, a loopback one only local names

    uv run pytest tests/test_chat_server.py -q
"""

import asyncio
import json
import logging

import pytest
import torch

from nanochat.chat_http import is_loopback
from nanochat.chat_server import Replica, ServerSettings, build_app
from nanochat.engine import Engine, SamplingParams
from nanochat.reply import ReplyParts, parts_of, reply_text
from tests.chat_fixtures import SCRIPTED_CONTENT, SCRIPTED_PARTS, chat_tokenizer, random_chat_model, scripted_chat_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return chat_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="module")
def apps(tok):
    def app(model):
        replica = Replica(0, model.eval(), tok, CPU, num_slots=4, dtype=torch.float32)
        return build_app([replica], tok, ServerSettings(model_id="nanochat-sft-test", source="sft", max_new_tokens=16))
    return {"random": app(random_chat_model(tok)[0]), "scripted": app(scripted_chat_model(tok)[0])}


def call(app, method, path, body=b"", headers=None, disconnect_mid_body=False):
    """Drive one request through the ASGI app -> (status or None, parsed body or bytes).
    disconnect_mid_body: the body's first half, then http.disconnect (an upload that is cut off)."""
    body = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"host": "127.0.0.1:8000", "content-type": "application/json", "content-length": str(len(body)),
               **(headers or {})}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    sent = []

    async def run():
        done = asyncio.Event()
        if disconnect_mid_body:
            incoming = [{"type": "http.request", "body": body[:len(body) // 2], "more_body": True},
                        {"type": "http.disconnect"}]
        else:
            incoming = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if incoming:
                return incoming.pop(0)
            await done.wait()  # the client stays until the response is complete
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done.set()
        await app(scope, receive, send)
    asyncio.run(run())
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        data = json.loads(data)
    except ValueError:
        pass
    return (start["status"] if start else None), data


def test_reply_parts_of_the_scripted_reply(tok):
    engine = Engine(scripted_chat_model(tok)[0].eval(), tok, num_slots=1)
    prompt = tok.render_for_reply([{"role": "user", "content": "What is six times seven?"}])
    rid = engine.add_request(prompt, SamplingParams(max_tokens=60))
    streamed, tokens = ReplyParts(tok), []
    while engine.has_work():
        for ev in engine.step():
            assert ev.request_id == rid
            streamed.feed(ev.token, ev.text)
            tokens += [ev.token] if ev.token >= 0 and ev.finish_reason != "stop" else []
    assert streamed.parts == SCRIPTED_PARTS and streamed.text() == SCRIPTED_CONTENT
    assert parts_of(tok, tokens) == SCRIPTED_PARTS and reply_text(SCRIPTED_PARTS) == SCRIPTED_CONTENT
    # the tool's expression is in the engine's Completion.text and in the transcript, not in the reply text
    completion = engine.generate_many([prompt], SamplingParams(max_tokens=60))[0][0]
    assert completion.tokens == tokens and "6*7" in completion.text and "<|python_start|>" in tok.decode(tokens)
    assert "6*7" not in SCRIPTED_CONTENT


def test_app_in_process_answers_with_the_reply_parts(apps):
    status, body = call(apps["scripted"], "POST", "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "What is six times seven?"}], "max_tokens": 60})
    assert status == 200, body
    message = body["choices"][0]["message"]
    assert message["content"] == SCRIPTED_CONTENT and message["nanochat"]["parts"] == SCRIPTED_PARTS
    status, body = call(apps["scripted"], "GET", "/stats")
    assert status == 200 and body["requests_served"] == 1 and body["model"] == "nanochat-sft-test"


def test_app_in_process_matches_the_engine(apps, tok):
    messages = [{"role": "user", "content": "What is the next token?"}]
    status, body = call(apps["random"], "POST", "/v1/chat/completions", {"messages": messages, "temperature": 0})
    assert status == 200, body
    engine = Engine(random_chat_model(tok)[0].eval(), tok, num_slots=1)
    ref = engine.generate_many([tok.render_for_reply(messages)], SamplingParams(max_tokens=16))[0][0]  # the app's default
    assert body["choices"][0]["message"]["content"] == reply_text(parts_of(tok, ref.tokens))
    assert body["usage"]["completion_tokens"] == 16 and body["choices"][0]["finish_reason"] == "length"


def test_client_gone_mid_body_is_quiet(apps, caplog):
    # issue 18 item 10: starlette's ClientDisconnect went to the catch-all handler: a 500 and two tracebacks
    good = {"messages": [{"role": "user", "content": "hi " * 50}], "max_tokens": 2}
    with caplog.at_level(logging.WARNING):
        status, _ = call(apps["random"], "POST", "/v1/chat/completions", good, disconnect_mid_body=True)
    assert status != 500 and not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    status, body = call(apps["random"], "POST", "/v1/chat/completions", good)
    assert status == 200, body


def test_exposed_server_takes_any_host_and_a_loopback_one_only_local_names(tok):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    replica = Replica(0, random_chat_model(tok)[0].eval(), tok, CPU, num_slots=1, dtype=torch.float32)
    for local_only, status in ((True, 400), (False, 200)):
        app = build_app([replica], tok, ServerSettings(model_id="m", source="sft", local_only=local_only))
        assert call(app, "GET", "/health", headers={"host": "chat.example.com"})[0] == status
        assert call(app, "GET", "/health", headers={"host": "localhost:8000"})[0] == 200
