"""A lean HTTP/1.1 client for unloaded REST latency: one socket, raw request bytes.

The baseline's MQTT side is timed with a lean client (``bench._broker_driver``); timing the
hub's REST side with httpx adds the client's own cost (about 0.5-2 ms per call on the
bench machine, more than the hub's), so the REST figure uses this client too. The
request is built once; each call sends it and reads one response (``Content-Length``
framed, as the hub answers), keeping the connection open or not.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

__all__ = ["latencies"]


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-body")
        body += chunk
    return status, body


def latencies(port: int, method: str, path: str, body: Any, headers: dict[str, str], calls: int,
              new_connection: bool) -> list[float]:
    """``calls`` sequential requests to 127.0.0.1:``port``; milliseconds each (connect included
    when ``new_connection``). Raises RuntimeError unless each answers 200 with a 200 device status."""
    data = json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
            f"Content-Length: {len(data)}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + data
    out: list[float] = []
    sock: socket.socket | None = None
    try:
        for _ in range(calls):
            t0 = time.perf_counter()
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(request)
            status, reply = _read_response(sock)
            out.append((time.perf_counter() - t0) * 1000)
            if status != 200 or json.loads(reply).get("status") != 200:
                raise RuntimeError(f"direct method failed: {status} {reply[:200]!r}")
            if new_connection:
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
    return out
