"""A real HTTP proxy in front of the hub that records requests and can fail or lose them.

Every request is recorded (:class:`Seen`, with its arrival time). ``fail_first=N``: the
first N requests get IoT Hub's 503 ``ServiceUnavailable`` (503001) without reaching the
hub, as a busy hub answers. ``drop(method, path)`` decides per request: when it returns
True the request still reaches the hub (which acts on it), but the proxy closes the
client connection without answering, as a network failure after sending does. Used to
prove that retries heal transient failures and that retried requests are safe.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


@dataclass
class Seen:
    method: str
    path: str
    body: Any
    status: int | None  # None: the response was dropped
    at: float = 0.0  # time.monotonic() when the request arrived


_BUSY = json.dumps({"Message": json.dumps({"errorCode": 503001, "message": "busy"}), "ExceptionMessage": ""}).encode()


class RecordingProxy:
    def __init__(self, upstream: str, drop: Callable[[str, str], bool] = lambda m, p: False, *, fail_first: int = 0) -> None:
        self.seen: list[Seen] = []
        self.drop = drop
        self.fail_first = fail_first
        self._arrived = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                at = time.monotonic()
                with proxy._lock:
                    proxy._arrived += 1
                    busy = proxy._arrived <= proxy.fail_first
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                if busy:
                    proxy.seen.append(Seen(self.command, self.path, _parse(raw), 503, at))
                    self.send_response(503)
                    self.send_header("content-type", "application/json")
                    self.send_header("iothub-errorcode", "ServiceUnavailable")
                    self.send_header("content-length", str(len(_BUSY)))
                    self.end_headers()
                    self.wfile.write(_BUSY)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, upstream + self.path, headers=headers, content=raw, timeout=120)
                dropped = proxy.drop(self.command, self.path)
                proxy.seen.append(Seen(self.command, self.path, _parse(raw), None if dropped else r.status_code, at))
                if dropped:
                    self.close_connection = True
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def times(self) -> list[float]:
        """Arrival times of every request so far, in order."""
        return sorted(s.at for s in self.seen)

    def requests(self, method: str, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _parse(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw
