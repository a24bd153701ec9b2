"""
Tests of scripts/chat_web.py against real servers (uvicorn subprocesses on 127.0.0.1) that serve the
tiny checkpoints of tests/chat_fixtures.py:
    A  the random model, API key on, two CPU replicas of 16 slots, a queue of 4 rows per replica
    B  the scripted model (a fixed reply with a calculator call), no key
Through the `openai` client package and raw HTTP: greedy replies match the engine run in-process,
streaming matches non-streaming, stop / seed / n / usage / finish reasons, the tool-call extension,
every bad input gets its 4xx with the bad value quoted at most ~100 characters (and the next good
request still works), the key is enforced, 16 concurrent streams give exactly what each gets alone,
a disconnect frees the slots (streaming or not; a reply nobody read is not counted as served), an
upload cut off mid-body logs nothing, a full queue gives 429. The --max-tokens of server A's flags
is now --max-new-tokens (the old name is tested in test_chat_cli.py).

    uv run pytest tests/test_chat_web.py -q
"""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest
from openai import APIStatusError, OpenAI

from nanochat.engine import Engine, SamplingParams
from tests.chat_fixtures import (RANDOM_TAG, SCRIPTED_CONTENT, SCRIPTED_PARTS, SCRIPTED_TAG, SSE, TOOL_EXPR,
                                 TOOL_RESULT, chat_servers, chat_tokenizer, make_chat_base, random_chat_model,
                                 request, server_log)

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOTS, QUEUE = 16, 4


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return chat_tokenizer(tiny_tokenizer)


@pytest.fixture(scope="module")
def base(tiny_tokenizer, tmp_path_factory):
    return make_chat_base(tmp_path_factory.mktemp("chat_web"), tiny_tokenizer)


@pytest.fixture(scope="module")
def servers(base):
    flags_a = ["--model-tag", RANDOM_TAG, "--api-key", KEY, "--num-gpus", "2", "--num-slots", str(SLOTS),
               "--max-queue", str(QUEUE), "--max-new-tokens", "16"]
    flags_b = ["--model-tag", SCRIPTED_TAG]
    with chat_servers(base, flags_a, flags_b) as urls:
        yield urls


@pytest.fixture(scope="module")
def url(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(url):
    return OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tok):
    """Greedy replies of the same random model, run in this process through the engine."""
    engine = Engine(random_chat_model(tok)[0].eval(), tok, num_slots=4)

    def run(messages, max_tokens, **kwargs):
        prompt = tok.render_for_reply(messages)
        return engine.generate_many([prompt], SamplingParams(max_tokens=max_tokens, temperature=0.0, **kwargs))[0][0]
    return run


def user(text):
    return [{"role": "user", "content": text}]


def stats(url):
    status, _, body = request(url, "GET", "/stats", headers=AUTH)
    assert status == 200, body
    return body


def wait_idle(url, timeout=10):
    deadline = time.time() + timeout
    while True:
        s = stats(url)
        if s["active"] == 0 and s["queued"] == 0 and all(w["rows_in_flight"] == 0 for w in s["workers"]):
            return s
        assert time.time() < deadline, f"the server did not become idle: {s}"
        time.sleep(0.05)


# -----------------------------------------------------------------------------
# the OpenAI API through the openai package


def test_non_streaming_matches_the_engine(client, reference, tok):
    messages = user("What is the next token?")
    r = client.chat.completions.create(model="anything", messages=messages, max_tokens=12, temperature=0)
    ref = reference(messages, 12)
    assert r.object == "chat.completion" and r.model.startswith("nanochat-sft-")
    assert len(r.choices) == 1 and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.choices[0].finish_reason == "length" == ref.finish_reason
    assert r.usage.prompt_tokens == len(tok.render_for_reply(messages))
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_streaming_matches_non_streaming(client):
    messages = user("Tell me a story")
    full = client.chat.completions.create(model="m", messages=messages, max_completion_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model="m", messages=messages, max_completion_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    # without include_usage no chunk carries usage
    plain = list(client.chat.completions.create(model="m", messages=messages, max_tokens=3, temperature=0, stream=True))
    assert all(c.usage is None for c in plain) and all(c.choices for c in plain)


def test_stop_string_ends_the_reply(client, reference):
    messages = user("Stop somewhere")
    text = reference(messages, 40).text
    # a stop string whose first occurrence is a few characters in
    i, stop = next((i, text[i:i + 2]) for i in range(4, len(text) - 2) if text.find(text[i:i + 2]) == i
                   and "\ufffd" not in text[i:i + 2])
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=40, temperature=0, stop=[stop, "never-seen"])
    assert r.choices[0].message.content == text[:i]
    assert r.choices[0].finish_reason == "stop"
    streamed = list(client.chat.completions.create(model="m", messages=messages, max_tokens=40, temperature=0,
                                                   stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text[:i]
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seed_reproduces_and_n_samples(client):
    messages = user("Sample me")
    kw = dict(model="m", messages=messages, max_tokens=16, temperature=1.0, top_p=0.95)
    a = client.chat.completions.create(seed=123, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=123, **kw).choices[0].message.content
    c = client.chat.completions.create(seed=124, **kw).choices[0].message.content
    assert a == b and a != c
    r = client.chat.completions.create(seed=7, n=3, extra_body={"top_k": 40}, **kw)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert len({ch.message.content for ch in r.choices}) == 3
    assert r.usage.completion_tokens == 3 * 16
    r2 = client.chat.completions.create(seed=7, n=3, extra_body={"top_k": 40}, **kw)
    assert [ch.message.content for ch in r2.choices] == [ch.message.content for ch in r.choices]
    # streamed n: every index gets its own deltas and its own finish
    chunks = list(client.chat.completions.create(seed=7, n=3, stream=True, extra_body={"top_k": 40}, **kw))
    for ch in r.choices:
        got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == ch.index)
        assert got == ch.message.content
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1, 2]


def test_system_message_is_folded_into_the_first_turn(client, tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == len(tok.render_for_reply(messages))
    dev = client.chat.completions.create(model="m", messages=[{"role": "developer", "content": "Be brief."}, messages[1]],
                                         max_tokens=2, temperature=0)
    assert dev.usage.prompt_tokens == r.usage.prompt_tokens and dev.choices[0].message.content == r.choices[0].message.content


def test_models_and_stats(client, url):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id.startswith("nanochat-sft-")
    assert client.models.retrieve(models[0].id).id == models[0].id
    with pytest.raises(APIStatusError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.status_code == 404
    client.chat.completions.create(model="m", messages=user("count me"), max_tokens=4, temperature=0)
    s = stats(url)
    assert s["model"] == models[0].id and s["num_workers"] == 2 and len(s["workers"]) == 2
    assert s["requests_served"] >= 1 and s["tokens_generated"] >= 4 and s["tokens_per_s"] > 0
    for key in ("active", "queued", "uptime_s"):
        assert key in s


# -----------------------------------------------------------------------------
# the tool-call extension (server B, scripted model)


def test_tool_calls_ride_in_the_stream(servers):
    url_b = servers[1]
    chunks = list(SSE(url_b, {"messages": user("What is six times seven?"), "max_tokens": 50}))
    assert chunks[-1] == "[DONE]"
    deltas = [c["choices"][0]["delta"] for c in chunks[:-1] if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == SCRIPTED_CONTENT  # a plain client's view
    tool = [d["nanochat"] for d in deltas if "nanochat" in d]
    assert "".join(t["text"] for t in tool if t["part"] == "python") == TOOL_EXPR
    assert "".join(t["text"] for t in tool if t["part"] == "python_output") == TOOL_RESULT
    assert {t["call"] for t in tool} == {0}
    for d in deltas:  # the expression is never in content; the result is, exactly once
        if d.get("nanochat", {}).get("part") == "python":
            assert d["content"] == ""
        if d.get("nanochat", {}).get("part") == "python_output":
            assert d["content"] == d["nanochat"]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]] == ["stop"]


def test_tool_call_parts_round_trip(servers, tok):
    url_b = servers[1]
    client = OpenAI(base_url=f"{url_b}/v1", api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="m", messages=user("What is six times seven?"), max_tokens=50)
    msg = r.choices[0].message
    assert msg.content == SCRIPTED_CONTENT and r.choices[0].finish_reason == "stop"
    assert msg.model_extra["nanochat"]["parts"] == SCRIPTED_PARTS
    # the parts go back as the assistant's content: the model sees its call and the forced output
    messages = user("What is six times seven?") + [{"role": "assistant", "content": SCRIPTED_PARTS}] + user("Again")
    r2 = client.chat.completions.create(model="m", messages=messages, max_tokens=50)
    assert r2.usage.prompt_tokens == len(tok.render_for_reply(messages))
    sp = tok.encode_special
    assert tok.render_for_reply(messages).count(sp("<|python_start|>")) == 1


# -----------------------------------------------------------------------------
# bad input: a clear 4xx, and the server keeps serving

GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HUGE_INT = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "FIELD": 1' + "0" * 400 + "}"
OVER_DIGIT_LIMIT = '{"messages": [{"role": "user", "content": "hi"}], "FIELD": ' + "7" * 5000 + "}"
LONG_CONVERSATION = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 7000} for i in range(5)]
BAD_REQUESTS = [
    # (name, body, expected status, param or None, words the message must contain)
    ("malformed JSON", '{"messages": [', 400, None, "not valid JSON"),
    ("not UTF-8", b'{"messages": "\xff"}', 400, None, "UTF-8"),
    ("body is an array", "[1, 2]", 400, None, "JSON object"),
    ("no messages", {"max_tokens": 2}, 400, "messages", "required"),
    ("messages not a list", {"messages": "hi"}, 400, "messages", "array"),
    ("empty conversation", {"messages": []}, 400, "messages", "empty"),
    ("message not an object", {"messages": ["hi"]}, 400, "messages[0]", "object"),
    ("unknown role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", '"wizard"'),
    ("tool role", {"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages[0].role", "function calling"),
    ("content wrong type", {"messages": [{"role": "user", "content": 42}]}, 400, "messages[0].content", "string"),
    ("image part", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0].type", "text"),
    ("system not first", {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
     400, "messages[1].role", "first"),
    ("only a system message", {"messages": [{"role": "system", "content": "a"}]}, 400, "messages", "user message"),
    ("ends on assistant", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     400, "messages[1].role", "end with a user"),
    ("roles do not alternate", {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     400, "messages[1].role", "alternate"),
    ("too many messages", {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "a"} for i in range(501)]},
     400, "messages", "500"),
    ("message too long", {"messages": [{"role": "user", "content": "x" * 8001}]}, 400, "messages[0].content", "8000"),
    ("conversation too long", {"messages": LONG_CONVERSATION}, 400, "messages", "32000"),
    ("longer than the context", {"messages": [{"role": "user", "content": " ".join(["token"] * 1300)}]},
     400, "messages", "context"),
    ("temperature too high", {**GOOD, "temperature": 2.5}, 400, "temperature", "[0.0, 2.0]"),
    ("temperature negative", {**GOOD, "temperature": -0.1}, 400, "temperature", "[0.0, 2.0]"),
    ("temperature a string", {**GOOD, "temperature": "hot"}, 400, "temperature", "number"),
    ("top_k too high", {**GOOD, "top_k": 201}, 400, "top_k", "[0, 200]"),
    ("top_k negative", {**GOOD, "top_k": -1}, 400, "top_k", "[0, 200]"),
    ("top_k a float", {**GOOD, "top_k": 1.5}, 400, "top_k", "integer"),
    ("top_p zero", {**GOOD, "top_p": 0}, 400, "top_p", "(0.0, 1.0]"),
    ("top_p above one", {**GOOD, "top_p": 1.5}, 400, "top_p", "(0.0, 1.0]"),
    ("max_tokens zero", {**GOOD, "max_tokens": 0}, 400, "max_tokens", "[1, 4096]"),
    ("max_tokens too high", {**GOOD, "max_tokens": 4097}, 400, "max_tokens", "[1, 4096]"),
    ("max_tokens a string", {**GOOD, "max_tokens": "10"}, 400, "max_tokens", "integer"),
    ("max_completion_tokens too high", {**GOOD, "max_completion_tokens": 5000}, 400, "max_completion_tokens", "[1, 4096]"),
    ("n zero", {**GOOD, "n": 0}, 400, "n", "[1, 8]"),
    ("n too high", {**GOOD, "n": 9}, 400, "n", "[1, 8]"),
    ("too many stop strings", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("empty stop string", {**GOOD, "stop": ""}, 400, "stop", "non-empty"),
    ("seed a string", {**GOOD, "seed": "1"}, 400, "seed", "integer"),
    ("stream not a boolean", {**GOOD, "stream": "yes"}, 400, "stream", "boolean"),
    ("tools", {**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools", "not supported"),
    ("logprobs", {**GOOD, "logprobs": True}, 400, "logprobs", "not supported"),
    ("oversized body", {"messages": [{"role": "user", "content": "x" * (1 << 20)}]}, 413, None, "bytes"),
    # issue 18 item 10: these were 500s, or echoed the whole value
    ("temperature 1e400 as an integer", HUGE_INT.replace("FIELD", "temperature"), 400, "temperature", "[0.0, 2.0]"),
    ("top_p 1e400 as an integer", HUGE_INT.replace("FIELD", "top_p"), 400, "top_p", "(0.0, 1.0]"),
    ("max_tokens of 5,000 digits", OVER_DIGIT_LIMIT.replace("FIELD", "max_tokens"), 400, None, "4300 digits"),
    ("seed of 5,000 digits", OVER_DIGIT_LIMIT.replace("FIELD", "seed"), 400, None, "4300 digits"),
    ("nested 100,000 deep", '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", 400, None, "nested too deeply"),
    ("max_tokens beside max_completion_tokens", {**GOOD, "max_completion_tokens": 4, "max_tokens": 0}, 400,
     "max_tokens", "[1, 4096]"),
    ("a 100k-character role", {"messages": [{"role": "x" * 100_000, "content": "hi"}]}, 400, "messages[0].role",
     "100002 characters"),
    ("NaN temperature", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature",
     "number"),
]


@pytest.mark.parametrize("name,body,status,param,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_a_clear_4xx(url, name, body, status, param, words):
    got, _, err = request(url, "POST", "/v1/chat/completions", body, headers=AUTH)
    assert got == status, err
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}, err
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param
    assert words in err["error"]["message"], err["error"]["message"]
    assert len(err["error"]["message"]) < 400, "a bad value is quoted back whole"
    ok, _, reply = request(url, "POST", "/v1/chat/completions", GOOD, headers=AUTH)  # still serving
    assert ok == 200 and reply["choices"][0]["message"]["content"], reply


def test_unknown_route_and_method(url):
    status, _, err = request(url, "GET", "/v2/nothing", headers=AUTH)
    assert status == 404 and "no route" in err["error"]["message"]
    status, _, err = request(url, "GET", "/v1/chat/completions", headers=AUTH)
    assert status == 405 and "not allowed" in err["error"]["message"]


# -----------------------------------------------------------------------------
# the API key


def test_api_key_is_enforced(url):
    for method, path in (("GET", "/v1/models"), ("GET", "/stats"), ("POST", "/v1/chat/completions")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, h, err = request(url, method, path, GOOD if method == "POST" else None, headers=headers)
            assert status == 401, (path, headers, err)
            assert err["error"]["code"] == "invalid_api_key" and "Authorization: Bearer" in err["error"]["message"]
            assert h.get("www-authenticate", h.get("WWW-Authenticate")) == "Bearer"
    assert request(url, "GET", "/health")[0] == 200
    status, headers, page = request(url, "GET", "/")  # the page itself; it then asks for the key
    assert status == 200 and "<title>nanochat</title>" in page and "__CSP_NONCE__" not in page
    csp = {k.lower(): v for k, v in headers.items()}["content-security-policy"]
    assert "script-src 'nonce-" in csp and f"nonce=\"{csp.split('nonce-')[1].split(chr(39))[0]}\"" in page
    with pytest.raises(APIStatusError) as e:
        OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401


# -----------------------------------------------------------------------------
# many clients at once


def test_16_concurrent_streams_match_each_alone(client, url, reference):
    prompts = [f"Question number {i}: what comes next?" * (1 + i % 3) for i in range(16)]
    alone = [client.chat.completions.create(model="m", messages=user(p), max_tokens=24, temperature=0).choices[0].message.content
             for p in prompts]
    assert alone[0] == reference(user(prompts[0]), 24).text
    before = [w["requests_served"] for w in stats(url)["workers"]]
    results, errors = [None] * 16, []
    barrier = threading.Barrier(16)

    def run(i):
        try:
            barrier.wait()
            stream = client.chat.completions.create(model="m", messages=user(prompts[i]), max_tokens=24, temperature=0,
                                                    stream=True)
            results[i] = "".join(c.choices[0].delta.content or "" for c in stream)
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert results == alone
    after = [w["requests_served"] for w in wait_idle(url)["workers"]]
    assert all(a > b for a, b in zip(after, before)), f"both replicas should serve: {before} -> {after}"


def test_disconnect_frees_the_slot(url):
    wait_idle(url)
    tokens_before = stats(url)["tokens_generated"]
    stream = SSE(url, {"messages": user("a long reply please"), "max_tokens": 480, "temperature": 0}, headers=AUTH)
    assert stream.status == 200
    it = iter(stream)
    for _ in range(4):
        next(it)
    assert stats(url)["active"] == 1
    stream.close()
    s = wait_idle(url, timeout=5)
    assert s["tokens_generated"] - tokens_before < 400, "the cancelled request kept decoding"
    # and the server goes on serving
    status, _, reply = request(url, "POST", "/v1/chat/completions", GOOD, headers=AUTH)
    assert status == 200, reply


def test_non_streaming_client_that_leaves_frees_its_slots(url):
    # issue 18 item 11: the reply went on decoding (the check ran only after 0.5 s without a token) and was served
    before = wait_idle(url)
    conn = http.client.HTTPConnection(urlsplit(url).hostname, urlsplit(url).port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({"messages": user("four long replies"), "max_tokens": 480,
                                                              "n": 4, "temperature": 1.0}),
                 headers={"Content-Type": "application/json", **AUTH})
    deadline = time.time() + 30
    while stats(url)["active"] < 4:  # all four rows decoding
        assert time.time() < deadline, "the request did not start"
        time.sleep(0.02)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    left = time.time()
    after = wait_idle(url, timeout=5)
    assert time.time() - left < 2.0, "the slots were not freed promptly"
    assert after["requests_served"] == before["requests_served"], "a reply nobody read counted as served"
    assert after["tokens_generated"] - before["tokens_generated"] < 4 * 480 // 2, "the rows kept decoding"


def test_upload_cut_off_mid_body_is_quiet(url, base):
    # issue 18 item 10: starlette's ClientDisconnect was logged as a 500 with two tracebacks
    log_before = len(server_log(base, url))
    for _ in range(3):
        with socket.create_connection((urlsplit(url).hostname, urlsplit(url).port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"messages\": [")
            time.sleep(0.2)  # the handler is reading the body
    time.sleep(0.5)
    assert request(url, "GET", "/health")[0] == 200
    log = server_log(base, url)[log_before:]
    assert "Traceback" not in log and "ERROR" not in log and "Exception" not in log, log


def test_full_queue_answers_429(url):
    wait_idle(url)
    long = {"messages": user("fill the slots"), "max_tokens": 480, "temperature": 1.0}
    streams = []
    try:
        for _ in range(4):  # 4 x 8 rows: both replicas' 16 slots full
            streams.append(SSE(url, {**long, "n": 8}, headers=AUTH))
            assert streams[-1].status == 200
        for _ in range(2):  # 4 rows each: both queues full
            streams.append(SSE(url, {**long, "n": QUEUE}, headers=AUTH))
            assert streams[-1].status == 200
        s = stats(url)
        assert [w["rows_in_flight"] for w in s["workers"]] == [SLOTS + QUEUE] * 2, s
        t0 = time.time()
        status, headers, err = request(url, "POST", "/v1/chat/completions", {**GOOD, "stream": True}, headers=AUTH)
        assert status == 429 and time.time() - t0 < 5, err
        assert {k.lower(): v for k, v in headers.items()}["retry-after"].isdigit()
        assert err["error"]["type"] == "rate_limit_error" and err["error"]["code"] == "rate_limit_exceeded"
        assert "busy" in err["error"]["message"]
        assert stats(url)["queued"] >= 1  # the last requests wait for slots
    finally:
        for stream in streams:
            stream.close()
    wait_idle(url)
    status, _, reply = request(url, "POST", "/v1/chat/completions", GOOD, headers=AUTH)
    assert status == 200, reply


def test_threads_flag_is_checked_before_anything_loads():
    """--threads below 1 is refused with the flag named (argparse's exit status 2, no traceback)."""
    out = subprocess.run([sys.executable, "-m", "scripts.chat_web", "--threads", "0"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "--threads must be >= 1, got 0" in out.stderr and "Traceback" not in out.stderr
