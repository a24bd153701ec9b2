"""
What stands between the socket and the chat server's app (nanochat/chat_server.py): the checks that
need no route, and the time and connection limits of the HTTP layer.

    app = RequestGuard(app, local_only=True)       # ASGI middleware: Host and Content-Type checks
    serve(app, host, port, ConnectionLimits(header_timeout=10, body_timeout=30, max_connections=512))

RequestGuard answers, before any route runs:
    400 invalid_host        with local_only, a Host header that is not localhost, 127.0.0.1 or [::1]
                            (any port), or none. A page on another site cannot reach a server on
                            localhost through DNS rebinding: its requests carry the attacker's name.
    415 unsupported_media   a POST whose Content-Type is not application/json (a form or text/plain
                            POST is what a page on another site may send without asking first).
local_only is for a server bound to a loopback address. Once --host exposes it, any Host is
accepted and the API key is what protects it.

GuardedH11Protocol is uvicorn's h11 protocol with limits that uvicorn's does not have:
    header_timeout   a request's headers must be complete this many seconds after its first byte
                     (for a new connection: after it opens); else 408 and the connection is closed
    body_timeout     its body must be complete this many seconds after its headers; else the
                     connection is closed (the handler sees a disconnect and stops quietly)
    max_connections  connections beyond this are answered 503 and closed at once, so idle sockets
                     cannot use up the process's file descriptors
Idle keep-alive connections close after uvicorn's timeout_keep_alive (5 s).

NOT covered: a client that reads its response slowly (its stream stays open while the server
writes), many clients that each stay under every limit, TLS. A server on the internet belongs
behind a reverse proxy (nginx, Caddy) that terminates TLS and limits connections and rates per
client (README, "Serving on a network").

Tests: tests/test_chat_guard.py (over HTTP: Host, Content-Type, slowloris, the connection cap).
"""

import ipaddress
from dataclasses import dataclass

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from nanochat.chat_api import error_response

LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")


def is_loopback(host):
    """Is the listening address `host` (--host) reachable from this machine only?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value):
    """A Host header -> the name without its port: "[::1]:8000" -> "[::1]", "localhost:80" -> "localhost"."""
    if value.startswith("["):
        return value[:value.find("]") + 1]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: the Host and Content-Type checks of the module docstring."""

    def __init__(self, app, local_only):
        self.app, self.local_only = app, local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await error_response(*refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope):
        """None, or (status, message, param, code) for a request this server does not take."""
        headers = {}
        for name, value in scope["headers"]:
            headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
        host = headers.get("host", "")
        if self.local_only and _host_name(host.lower()) not in LOCAL_HOST_NAMES:
            shown = repr(host[:100]) if host else "(none)"
            return (400, f"the Host header {shown} is not a local name: this server listens on a loopback "
                         f"address and answers only to {', '.join(LOCAL_HOST_NAMES)} (any port). To serve "
                         "other names, start it with --host (and an --api-key)", None, "invalid_host")
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                shown = repr(media[:100]) if media else "none"
                return (415, f"a POST body must be JSON, sent with 'Content-Type: application/json'; this one has "
                             f"Content-Type {shown}", None, "unsupported_media_type")
        return None


@dataclass
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 512


class GuardedH11Protocol(H11Protocol):
    """uvicorn's H11Protocol plus the header and body time-outs and the connection cap (`limits`,
    set on a subclass by protocol_class)."""

    limits = ConnectionLimits()

    def connection_made(self, transport):
        self._timer, self._timer_for = None, None
        if len(self.server_state.connections) >= self.limits.max_connections:
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                            b"content-length: 37\r\n\r\ntoo many connections; try again later")
            transport.close()
            return
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc):
        self._disarm()
        if self.transport is not None:  # None: refused by the cap, never registered
            super().connection_lost(exc)

    def data_received(self, data):
        super().data_received(data)
        self._track()

    def on_response_complete(self):
        super().on_response_complete()
        self._disarm()  # idle until the next request's first byte: uvicorn's keep-alive timeout

    def _track(self):
        """Arm the timer of the phase the client is in, from the first byte of that phase."""
        state = self.conn.their_state
        if state is h11.IDLE and self._timer_for != "headers":
            self._arm("headers")
        elif state is h11.SEND_BODY and self._timer_for != "body":
            self._arm("body")
        elif state not in (h11.IDLE, h11.SEND_BODY):
            self._disarm()

    def _arm(self, phase):
        self._disarm()
        seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
        self._timer, self._timer_for = self.loop.call_later(seconds, self._expired, phase), phase

    def _disarm(self):
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_for = None, None

    def _expired(self, phase):
        self._timer, self._timer_for = None, None
        if self.transport.is_closing():
            return
        if phase == "headers" and self.conn.their_state is h11.IDLE and self.conn.our_state is h11.IDLE:
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
                                 b"content-length: 35\r\n\r\nthe request headers came too slowly")
        self.transport.close()  # a handler reading the body sees http.disconnect


def protocol_class(limits):
    """A GuardedH11Protocol subclass with these limits, for uvicorn.Config(http=...)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def serve(app, host, port, limits):
    """Run `app` with uvicorn on host:port under `limits` until SIGINT / SIGTERM."""
    config = uvicorn.Config(app, host=host, port=port, http=protocol_class(limits), log_level="warning",
                            timeout_graceful_shutdown=2, backlog=min(128, limits.max_connections))
    uvicorn.Server(config).run()
