"""
The OpenAI Chat Completions request, as scripts/chat_web.py accepts it: the limits, the body read
(read_json: size, UTF-8, JSON) and checked into (messages, sampling parameters, stream options), and
OpenAI-shaped error bodies. Every rejection is an ApiError(status, message, param, code) that the
server answers as {"error": {"message", "type", "param", "code"}}; a value quoted back in a message
is cut to ECHO_CHARS characters. Tests: tests/test_chat_web.py, over HTTP and in-process.

Sampling limits: temperature in [0, 2], where 0 and any value below nanochat.sampling.GREEDY_BELOW
(1e-4) decode greedily (a tinier one would overflow logits / T); top_p in (0, 1]; top_k 0 (all
tokens) to MAX_TOP_K; max_tokens (or max_completion_tokens) 1 to MAX_TOKENS_LIMIT; n 1 to MAX_N.
"""

import json
import math
import sys

from fastapi.responses import JSONResponse

# request limits (see the docstring); the body limit leaves room for JSON escapes of 32,000 characters
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_CONVERSATION_CHARS = 32_000
MAX_BODY_BYTES = 1 << 20
MAX_TOKENS_LIMIT = 4096
MAX_N = 8
MAX_STOP = 4
MAX_TOP_K = 200
RETRY_AFTER_S = 2
ECHO_CHARS = 100


class ApiError(Exception):
    """A request the server refuses; becomes {"error": {...}} with this status."""

    def __init__(self, status, message, param=None, code=None, type="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers


def error_response(status, message, param=None, code=None, type="invalid_request_error", headers=None):
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request):
    """The request's body as parsed JSON; a 4xx ApiError for a body too large, not UTF-8, not JSON,
    nested too deeply or holding an integer over Python's digit limit. A client that leaves mid-body
    raises starlette's ClientDisconnect (the server answers it quietly)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and len(length) < 20 and int(length) > MAX_BODY_BYTES:
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
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply to read; a chat request is a few levels deep",
                       code="invalid_json") from None
    except ValueError:  # the one ValueError besides JSONDecodeError: an integer over int(str)'s digit limit
        raise ApiError(400, f"the request body holds an integer of over {sys.get_int_max_str_digits()} digits; "
                            "no field takes one that long", code="invalid_json") from None


def _typename(value):
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)


def echo(value, limit=ECHO_CHARS):
    """A value of the request as an error message quotes it: JSON, cut to `limit` characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (ValueError, RecursionError, TypeError):
        text = f"<{_typename(value)}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _number(body, name, lo, hi, lo_open=False):
    value = body.get(name)
    if value is None:
        return None
    # ints are compared as ints: float() of a huge one overflows; JSON's NaN and Infinity are not numbers here
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise ApiError(400, f"'{name}' must be a number, got {_typename(value)} {echo(value)}", name)
    if value < lo or value > hi or (lo_open and value == lo):
        span = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise ApiError(400, f"'{name}' must be in {span}, got {echo(value)}", name)
    return float(value)


def _integer(body, name, lo, hi):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer, got {_typename(value)} {echo(value)}", name)
    if not lo <= value <= hi:
        raise ApiError(400, f"'{name}' must be in [{lo}, {hi}], got {echo(value)}", name)
    return value


def _content(message, i, role):
    """A message's content -> str (user/system) or a list of tokenizer parts (assistant)."""
    param = f"messages[{i}].content"
    content = message.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(400, f"{param} must be a string or an array of content parts, got {_typename(content)}", param)
    allowed = ("text", "python", "python_output") if role == "assistant" else ("text",)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise ApiError(400, f"{param}[{j}] has type {echo(kind)}; {role} content parts must be one of "
                                f"{', '.join(allowed)} (this model reads text only)", f"{param}[{j}].type")
        if not isinstance(part.get("text"), str):
            raise ApiError(400, f"{param}[{j}].text must be a string", f"{param}[{j}].text")
        parts.append({"type": kind, "text": part["text"]})
    if role != "assistant":
        return "".join(p["text"] for p in parts)
    return parts


def parse_chat_request(body, max_tokens_default, temperature_default, top_k_default):
    """Check a Chat Completions body against the limits; returns (messages, sampling dict, stream,
    include_usage). The defaults fill what the body leaves out (the server's --max-tokens etc.)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_typename(body)}")
    for name, off in (("tools", None), ("functions", None), ("logit_bias", None), ("logprobs", False),
                      ("top_logprobs", None), ("presence_penalty", 0), ("frequency_penalty", 0)):
        value = body.get(name)
        if value not in (None, off, [], {}, 0):
            raise ApiError(400, f"'{name}' is not supported by this server; leave it out", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise ApiError(400, "only response_format {'type': 'text'} is supported", "response_format", "unsupported_parameter")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise ApiError(400, f"'model' must be a string, got {_typename(body['model'])}", "model")

    # messages
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required: a list of {'role', 'content'} objects", "messages")
    if not isinstance(messages, list):
        raise ApiError(400, f"'messages' must be an array, got {_typename(messages)}", "messages")
    if not messages:
        raise ApiError(400, "'messages' is empty; send at least one user message", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"too many messages: {len(messages)}, at most {MAX_MESSAGES}; start a new chat", "messages")
    out, total = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object with 'role' and 'content', got {_typename(m)}", f"messages[{i}]")
        role = m.get("role")
        if role in ("system", "developer"):
            if i != 0:
                raise ApiError(400, f"messages[{i}] is a {role} message; only the first message may be one", f"messages[{i}].role")
            role = "system"
        elif role not in ("user", "assistant"):
            hint = " (this server has no function calling)" if role in ("tool", "function") else ""
            raise ApiError(400, f"messages[{i}].role {echo(role)} is not supported{hint}; use system, user or assistant",
                           f"messages[{i}].role")
        content = _content(m, i, role)
        chars = len(content) if isinstance(content, str) else sum(len(p["text"]) for p in content)
        if chars > MAX_MESSAGE_CHARS:
            raise ApiError(400, f"messages[{i}] is {chars} characters long, at most {MAX_MESSAGE_CHARS}",
                           f"messages[{i}].content", "message_too_long")
        total += chars
        out.append({"role": role, "content": content})
    if total > MAX_CONVERSATION_CHARS:
        raise ApiError(400, f"the conversation is {total} characters long, at most {MAX_CONVERSATION_CHARS}; "
                            "start a new chat or shorten it", "messages", "conversation_too_long")
    turns = out[1:] if out[0]["role"] == "system" else out
    for k, m in enumerate(turns):
        expected = "user" if k % 2 == 0 else "assistant"
        if m["role"] != expected:
            i = k + (len(out) - len(turns))
            raise ApiError(400, f"messages[{i}] has role {m['role']!r} where {expected!r} was expected: after an "
                                "optional system message, roles alternate user, assistant, user, ...", f"messages[{i}].role")
    if not turns:
        raise ApiError(400, "the conversation has only a system message; add a user message", "messages")
    if turns[-1]["role"] != "user":
        raise ApiError(400, "the conversation must end with a user message (the model replies to it)",
                       f"messages[{len(out) - 1}].role")

    # sampling
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0, lo_open=True)
    top_k = _integer(body, "top_k", 0, MAX_TOP_K)
    legacy_max_tokens = _integer(body, "max_tokens", 1, MAX_TOKENS_LIMIT)  # checked even when the newer name is given
    max_tokens = _integer(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT)
    if max_tokens is None:
        max_tokens = legacy_max_tokens
    n = _integer(body, "n", 1, MAX_N)
    seed = _integer(body, "seed", -(1 << 63), (1 << 64) - 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a non-empty string or an array of at most {MAX_STOP} non-empty strings", "stop")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, got {_typename(stream)}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "'stream_options' must be an object like {'include_usage': true}", "stream_options")
    sampling = dict(
        max_tokens=max_tokens or max_tokens_default,
        temperature=temperature_default if temperature is None else temperature,
        top_k=(top_k_default if top_k is None else top_k) or None,
        top_p=None if top_p in (None, 1.0) else top_p,
        seed=seed, stop=tuple(stop), n=n or 1,
    )
    return out, sampling, stream, bool(options.get("include_usage", False))
