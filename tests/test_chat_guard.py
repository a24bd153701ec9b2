"""
The HTTP layer of scripts/chat_web.py (nanochat/chat_http.py) against a real server on 127.0.0.1
with small limits (--header-timeout 1, --body-timeout 1.5, --max-connections 6), over raw sockets:
  - Host: only localhost, 127.0.0.1 and [::1] (any port) are answered on a loopback --host (400
    otherwise, and without a Host); the startup log says so (issue 18 item 13)
  - a POST that is not Content-Type: application/json gets 415 (item 13)
  - slowloris: headers or a body sent a byte at a time are cut off at their time-out; a keep-alive
    connection idle between requests and a long streamed reply are not (item 12)
  - connections beyond the cap get 503 at once, and the server answers again once they are gone (item 12)
The exposed mode (--host 0.0.0.0: any Host) is tested in-process in tests/test_chat_server.py.

    uv run pytest tests/test_chat_guard.py -q
"""

import json
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.chat_fixtures import RANDOM_TAG, SSE, chat_server, make_chat_base, request, server_log

HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1.0, 1.5, 6
GOOD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def base(tiny_tokenizer, tmp_path_factory):
    return make_chat_base(tmp_path_factory.mktemp("chat_guard"), tiny_tokenizer)


@pytest.fixture(scope="module")
def url(base):
    with chat_server(base, "--model-tag", RANDOM_TAG, "--header-timeout", str(HEADER_TIMEOUT),
                     "--body-timeout", str(BODY_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)) as url:
        yield url


def connect(url):
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def exchange(url, raw):
    """Send raw bytes, read until the server closes -> (status or None, response text)."""
    with connect(url) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n", 1)[0].split()
    return (int(head[1]) if len(head) > 1 else None), data.decode(errors="replace")


def post(url, host, content_type, body=GOOD):
    payload = json.dumps(body).encode()
    lines = ["POST /v1/chat/completions HTTP/1.1", "Connection: close", f"Content-Length: {len(payload)}"]
    lines += [f"Host: {host}"] if host is not None else []
    lines += [f"Content-Type: {content_type}"] if content_type is not None else []
    return exchange(url, ("\r\n".join(lines) + "\r\n\r\n").encode() + payload)


def seconds_until_closed(sock, first, trickle, limit=8.0):
    """Send `first`, then one byte of `trickle` every 0.25 s -> (seconds until the server closed, what it sent)."""
    sock.sendall(first)
    sock.settimeout(0.25)
    t0, got = time.time(), b""
    for byte in trickle:
        if time.time() - t0 > limit:
            break
        try:
            sock.sendall(bytes([byte]))
            chunk = sock.recv(4096)
            if not chunk:
                return time.time() - t0, got
            got += chunk
        except socket.timeout:
            continue
        except OSError:  # reset by the server
            return time.time() - t0, got
    return float("inf"), got


def test_only_local_host_names_are_answered(url, base):
    for host in ("127.0.0.1", f"127.0.0.1:{urlsplit(url).port}", "localhost", "LOCALHOST:80", "[::1]", "[::1]:8000"):
        status, text = post(url, host, "application/json")
        assert status == 200, (host, text)
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example", "[::2]"):
        status, text = post(url, host, "application/json")
        assert status == 400 and "invalid_host" in text and "--host" in text, (host, text)
    status, text = exchange(url, b"GET /health HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert status == 400 and "invalid_host" in text, text
    status, text = exchange(url, b"GET /health HTTP/1.0\r\n\r\n")  # no Host at all (HTTP/1.1 needs one: h11 refuses)
    assert status == 400 and "invalid_host" in text, text
    assert "requests whose Host is not localhost, 127.0.0.1 or [::1] are refused" in server_log(base, url)


def test_post_must_be_json(url):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        status, text = post(url, "127.0.0.1", content_type)
        assert status == 415 and "unsupported_media_type" in text and "application/json" in text, (content_type, text)
    status, text = post(url, "127.0.0.1", "Application/JSON; charset=utf-8")
    assert status == 200, text


def test_slow_headers_are_cut_off(url):
    with connect(url) as sock:
        took, got = seconds_until_closed(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: " + b"a" * 100)
    assert HEADER_TIMEOUT * 0.8 < took < HEADER_TIMEOUT + 2.0, f"a slowloris connection stayed open {took:.1f} s"
    assert got.startswith(b"HTTP/1.1 408"), got


def test_slow_body_is_cut_off(url, base):
    log_before = len(server_log(base, url))
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 200\r\n\r\n")
    with connect(url) as sock:
        took, _ = seconds_until_closed(sock, head, b'{"messages": [' + b" " * 180)
    assert BODY_TIMEOUT * 0.8 < took < BODY_TIMEOUT + 2.0, f"a slow body kept its connection {took:.1f} s"
    assert request(url, "GET", "/health")[0] == 200
    assert "Traceback" not in server_log(base, url)[log_before:], "the cut-off body was logged as an error"


def test_idle_keep_alive_and_long_replies_are_not_cut(url):
    with connect(url) as sock:  # two requests on one connection, longer apart than the header time-out
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            got = b""
            while b'{"status":"ok"}' not in got:  # headers and body may come in separate packets
                chunk = sock.recv(4096)
                assert chunk, f"the keep-alive connection was closed: {got}"
                got += chunk
            assert got.startswith(b"HTTP/1.1 200"), got
            time.sleep(HEADER_TIMEOUT + 0.5)
    stream = iter(SSE(url, {"messages": [{"role": "user", "content": "a long one"}], "max_tokens": 400}))
    first = next(stream)
    time.sleep(BODY_TIMEOUT + 0.5)  # the reply is read slowly: its connection is not cut
    chunks = [first, *stream]
    assert chunks[-1] == "[DONE]" and chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_connections_beyond_the_cap_get_503(url):
    idle = [connect(url) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        with connect(url) as sock:  # answered on arrival (a client that sends first may see a reset instead)
            text = sock.recv(4096).decode()
            assert text.startswith("HTTP/1.1 503") and "too many connections" in text, text
            assert sock.recv(4096) == b"", "a refused connection stays open"
    finally:
        for sock in idle:
            sock.close()
    deadline = time.time() + 5
    while True:  # the closed sockets leave the server's count
        status, text = exchange(url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        if status == 200:
            break
        assert time.time() < deadline, text
        time.sleep(0.1)
