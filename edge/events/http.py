"""GET /status (JSON) and GET /metrics (Prometheus text) from the running pipeline.

Standard library only (http.server in a daemon thread): the endpoint exists so that a monitoring
system and a technician's browser can see the box, not to serve traffic. Each connection has a
socket timeout so a client that opens a connection and never speaks cannot pin a thread for ever,
and request logging is off (journald is not the place for one line per Prometheus scrape), as are
tracebacks for clients that hang up mid-reply.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from vrclip.edge.errors import ConfigError
from vrclip.edge.events.health import Health

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Connections served at once (a monitoring system and a few browsers need a handful); one more is
#: answered 503 and closed at once instead of getting a thread of its own.
MAX_CONNECTIONS = 16
_BUSY_BODY = b"vrclip-edge: too many connections, retry\n"
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 10\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10.0
    server_version = "vrclip-edge"
    protocol_version = "HTTP/1.1"

    def _reply(self, code: int, content_type: str, body: bytes, head_only: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _route(self, head_only: bool) -> None:
        path = self.path.split("?", 1)[0]
        health = self.server.health
        if path == "/status":
            body = json.dumps(health.snapshot(), indent=1, allow_nan=False).encode("utf-8")
            self._reply(200, "application/json", body, head_only)
        elif path == "/metrics":
            self._reply(200, PROMETHEUS_CONTENT_TYPE, health.prometheus().encode("utf-8"), head_only)
        elif path == "/":
            self._reply(
                200, "text/plain; charset=utf-8", b"vrclip-edge: GET /status or /metrics\n", head_only
            )
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found: try /status or /metrics\n", head_only)

    def do_GET(self) -> None:
        self._route(head_only=False)

    def do_HEAD(self) -> None:
        self._route(head_only=True)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    #: Set per host in HealthServer: AF_INET6 for an IPv6 address such as "::" or "::1".
    address_family = socket.AF_INET
    health: Health
    #: Free connection slots (MAX_CONNECTIONS); a handler thread holds one until its client is gone.
    slots: threading.BoundedSemaphore

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection only while a slot is free: clients that connect faster than they
        go (or never speak) must not grow the service's thread count without bound."""
        if not self.slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request (a scraper's timeout, a closed browser tab) is not an
        error of ours: say nothing. Anything else is a bug and keeps socketserver's traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Server6(_Server):
    """The same server on an IPv6 address (sinks.http.host = "::" serves every address of the box)."""

    address_family = socket.AF_INET6


def _refuse(request: socket.socket) -> None:
    """Answer 503 without waiting: a fresh connection's send buffer is empty, and a client that
    cannot take even that is simply closed."""
    with contextlib.suppress(OSError):
        request.setblocking(False)
        request.send(_BUSY_REPLY)


class HealthServer:
    """Serves a Health object on host:port until `close()`. Port 0 picks a free port (see `.port`).

    At most `max_connections` clients are served at once; the next gets a 503 until one leaves.
    """

    def __init__(
        self,
        health: Health,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve status on {host}:{port} ({exc.strerror or exc}): change sinks.http.host / "
                "sinks.http.port, or set sinks.http.enabled = false"
            ) from None
        self._server.health = health
        self._server.slots = threading.BoundedSemaphore(max_connections)
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HealthServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
