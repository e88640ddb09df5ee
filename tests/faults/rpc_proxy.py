"""A JSON-RPC proxy in front of a real node (anvil), for node faults over real HTTP.

:class:`RpcProxy` listens on 127.0.0.1 (a free port) in its own threads and forwards every
request to the node, except while a fault is set (:meth:`RpcProxy.fail`):

- ``refuse``: the connection is reset before any answer (a node that is down or unreachable);
- ``http500``: ``500 Internal Server Error`` with no JSON-RPC body (a broken gateway);
- ``rpc_error``: HTTP 200 with a JSON-RPC error object (a node that is up but answers errors,
  e.g. a rate limit);
- ``delay``: the request is held ``delay`` seconds, then forwarded (a slow node; a client whose
  timeout is shorter gives up, while the node still gets the request).

A fault applies to the next ``count`` requests (None: until :meth:`RpcProxy.clear`), optionally
only to the JSON-RPC ``methods`` named. ``log`` keeps (method, what was done) per request.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

REFUSE = "refuse"
HTTP500 = "http500"
RPC_ERROR = "rpc_error"
DELAY = "delay"
FAULTS = (REFUSE, HTTP500, RPC_ERROR, DELAY)

RPC_ERROR_CODE = -32005  # "limit exceeded" in EIP-1474; anything but a revert


@dataclass
class Fault:
    kind: str
    count: int | None = None  # requests left to fault (None: until cleared)
    methods: frozenset[str] | None = None  # only these JSON-RPC methods (None: any)
    delay: float = 0.0

    def applies(self, method: str) -> bool:
        return (self.count is None or self.count > 0) and (self.methods is None or method in self.methods)


@dataclass
class RpcProxy:
    """An HTTP JSON-RPC proxy between the agents and ``upstream`` (a node's URL)."""

    upstream: str
    log: list[tuple[str, str]] = field(default_factory=list)
    fault: Fault | None = None
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ------------------------------------------------------------------ control

    def start(self) -> RpcProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="rpc-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RpcProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(
        self, kind: str, count: int | None = None, methods: Iterable[str] | None = None, delay: float = 0.0
    ) -> None:
        """Fault the next ``count`` requests (None: every one until :meth:`clear`) of ``methods``
        (None: any) with ``kind``."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}: one of {FAULTS}")
        with self._lock:
            self.fault = Fault(kind, count, frozenset(methods) if methods is not None else None, delay)

    def clear(self) -> None:
        with self._lock:
            self.fault = None

    def faulted(self, kind: str | None = None) -> int:
        """How many requests were faulted (with ``kind``, or any)."""
        return sum(1 for _, done in self.log if done != "forward" and (kind is None or done == kind))

    def methods(self, done: str = "forward") -> list[str]:
        return [method for method, what in self.log if what == done]

    # ------------------------------------------------------------------ serving

    def _take(self, method: str) -> Fault | None:
        """The fault for this request, if any (and count it down)."""
        with self._lock:
            fault = self.fault
            if fault is None or not fault.applies(method):
                self.log.append((method, "forward"))
                return None
            if fault.count is not None:
                fault.count -= 1
            self.log.append((method, fault.kind))
            return fault

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        method = str(request.get("method")) if isinstance(request, dict) else "batch"
        fault = self._take(method)
        if fault is not None and fault.kind == REFUSE:
            # Reset the connection: no status line, no body (SO_LINGER 0 sends an RST on close).
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.close_connection = True
            handler.connection.close()
            return
        if fault is not None and fault.kind == HTTP500:
            self._reply(handler, 500, b"proxy: upstream failed\n", "text/plain")
            return
        if fault is not None and fault.kind == RPC_ERROR:
            rid = request.get("id") if isinstance(request, dict) else None
            error = {"code": RPC_ERROR_CODE, "message": f"proxy: request limit exceeded ({method})"}
            self._reply(handler, 200, json.dumps({"jsonrpc": "2.0", "id": rid, "error": error}).encode())
            return
        if fault is not None and fault.kind == DELAY:
            time.sleep(fault.delay)
        upstream = urllib.request.Request(self.upstream, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(upstream, timeout=30) as response:
                self._reply(handler, response.status, response.read())
        except urllib.error.HTTPError as exc:
            self._reply(handler, exc.code, exc.read())
        except OSError:  # the node itself is gone: so is the answer
            handler.close_connection = True

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, kind: str = "application/json") -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", kind)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:  # the client gave up (its timeout): nothing to answer
            pass
