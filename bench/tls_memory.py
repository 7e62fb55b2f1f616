"""Where a TLS connection's memory goes in a Python asyncio server (the TLS-per-device floor).

    .venv/bin/python -m bench.tls_memory --count 2000

A bare asyncio TLS echo server (no MQTT, no hub) in one process, N idle TLS clients in
another; the server's RSS per connection is measured for each variant:

* ``plain``: no TLS (the socket, transport and protocol objects);
* ``tls``: asyncio's default SSLProtocol (256 KiB read buffer per connection);
* ``tls_read16k``/``tls_read4k``: ``SSLProtocol.max_size`` lowered (what the hub does);
* ``tls_read4k_notickets``: also ``num_tickets = 0`` (no TLS 1.3 session tickets);
* ``tls_read4k_uvloop``: the same on uvloop (its own SSL protocol, not tunable).

CPython already sets ``SSL_MODE_RELEASE_BUFFERS`` on every context (OpenSSL frees a
connection's record buffers when idle), so what remains is OpenSSL's per-connection state
plus asyncio's objects. Prints one JSON object: KB per connection per variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench._procs import free_port, proc_status, wait_port

SERVER = textwrap.dedent("""
    import asyncio, ssl, sys
    variant, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    import asyncio.sslproto as sp
    if "read16k" in variant: sp.SSLProtocol.max_size = 16 * 1024
    if "read4k" in variant: sp.SSLProtocol.max_size = 4 * 1024
    ctx = None
    if variant != "plain":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if "notickets" in variant:
            ctx.num_tickets = 0
    class Echo(asyncio.Protocol):
        def connection_made(self, t): self.t = t
        def data_received(self, d): self.t.write(d)
    async def main():
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port, ssl=ctx, backlog=4096)
        await asyncio.Event().wait()
    if "uvloop" in variant:
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
""")

CLIENT = textwrap.dedent("""
    import asyncio, ssl, sys
    port, count, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    async def main():
        ctx = ssl.create_default_context(cafile=ca) if ca != "-" else None
        sem = asyncio.Semaphore(200)
        conns = []
        async def one(i):
            async with sem:
                r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                    server_hostname="localhost" if ctx else None, local_addr=(f"127.0.0.{2 + i % 8}", 0))
                w.write(b"x"); await w.drain(); await r.readexactly(1)
                conns.append(w)
        await asyncio.gather(*(one(i) for i in range(count)))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    asyncio.run(main())
""")


def measure(variant: str, count: int, certs: tuple[Path, Path, Path]) -> float:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, variant, str(port), str(certs[1]), str(certs[2])])
    try:
        wait_port(port, server, "server")
        time.sleep(0.3)
        before = proc_status(server.pid)["VmRSS"]
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(count),
                                   "-" if variant == "plain" else str(certs[0])],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdin is not None
        if client.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{variant}: clients failed")
        time.sleep(1.0)
        after = proc_status(server.pid)["VmRSS"]
        client.stdin.close()
        client.wait(30)
        client.stdout.close()
        return round((after - before) / count, 2)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    from bench.bench_fleet import make_certificates

    variants = ["plain", "tls", "tls_read16k", "tls_read4k", "tls_read4k_notickets"]
    try:
        import uvloop  # noqa: F401

        variants.append("tls_read4k_uvloop")
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certificates(Path(tmp))
        result = {"connections": args.count, "kb_per_connection": {v: measure(v, args.count, certs) for v in variants}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
