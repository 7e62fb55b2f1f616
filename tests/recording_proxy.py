"""A real HTTP proxy in front of the hub that records requests and can lose responses.

``drop(method, path)`` decides per request: when it returns True the request still reaches
the hub (which acts on it), but the proxy closes the client connection without answering,
as a network failure after sending does. Used to prove that retried requests are safe.
"""

from __future__ import annotations

import json
import threading
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


class RecordingProxy:
    def __init__(self, upstream: str, drop: Callable[[str, str], bool] = lambda m, p: False) -> None:
        self.seen: list[Seen] = []
        self.drop = drop
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                r = httpx.request(self.command, upstream + self.path, headers=headers, content=raw, timeout=120)
                dropped = proxy.drop(self.command, self.path)
                body = json.loads(raw) if raw else None
                proxy.seen.append(Seen(self.command, self.path, body, None if dropped else r.status_code))
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

    def requests(self, method: str, path_prefix: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path.startswith(path_prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
