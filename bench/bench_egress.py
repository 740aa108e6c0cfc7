"""Egress cost: throughput and per-connection latency through the proxy vs. a direct loopback connection.

Run: ``python bench/bench_egress.py [--mib 128] [--connections 300] [--audit]``.

Every part runs in its own process, as in production: the origin (a threaded
TCP server), the host proxy (``EgressProxy``, anyio), the in-sandbox bridge
(``bridge.py`` under ``python3 -I -S``), and this client. Three paths, in one run:

* ``direct``: client -> origin over loopback TCP (the baseline);
* ``proxy``: client -> proxy's unix socket (CONNECT) -> origin;
* ``bridge+proxy``: client -> bridge TCP -> unix socket -> proxy -> origin,
  which is the path a sandboxed command takes.

Throughput moves ``--mib`` MiB each way (download: origin -> client; upload:
client -> origin) on one connection, best of ``--repeat``; latency is connect +
tunnel set-up + a one-byte round trip per fresh connection (median and p90).
Paths are measured interleaved; ratios are against ``direct``.
``--audit`` adds the fsynced audit record the proxy writes per connection.
The machine has 2 cores shared by all processes, so ratios are what to read.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from inwall.audit import AuditLog
from inwall.sandbox.egress.proxy import EgressProxy
from inwall.sandbox.egress.rules import NetworkRules

CRED = "bench-credential"
CHUNK = 256 * 1024
Connect = Callable[[], socket.socket]
BRIDGE = Path(__file__).resolve().parents[1] / "src" / "inwall" / "sandbox" / "egress" / "bridge.py"


# --- roles (each runs in its own process) ------------------------------------------------------


def _serve_bulk(sock: socket.socket, op: bytes) -> None:
    with sock:
        size = int.from_bytes(_recv_exact(sock, 8), "big")
        if op == b"D":  # download: send size bytes
            block = b"\0" * CHUNK
            while size > 0:
                n = min(size, CHUNK)
                sock.sendall(block[:n])
                size -= n
        else:  # upload: read size bytes, then acknowledge
            while size > 0:
                data = sock.recv(min(size, CHUNK))
                if not data:
                    return
                size -= len(data)
            sock.sendall(b"k")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("closed early")
        buf += data
    return buf


def role_origin() -> None:
    """Echo probes are answered inline (no thread start in the latency figure); bulk runs get a thread."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                op = _recv_exact(conn, 1)
            except OSError:
                conn.close()
                continue
            if op == b"E":
                with conn, contextlib.suppress(OSError):
                    conn.sendall(_recv_exact(conn, 1))
            else:
                threading.Thread(target=_serve_bulk, args=(conn, op), daemon=True).start()


def role_proxy(sock_path: str, allow: str, audit_path: str | None) -> None:
    async def main() -> None:
        audit = AuditLog(audit_path) if audit_path else None
        rules = NetworkRules.from_settings([allow], [])
        async with EgressProxy(rules, Path(sock_path), credential=CRED, audit=audit, max_connections=1024):
            print("ready", flush=True)
            await anyio.sleep_forever()

    anyio.run(main)


# --- the client ----------------------------------------------------------------------------------


def _connect_direct(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tunnel(sock: socket.socket, port: int) -> socket.socket:
    auth = base64.b64encode(f"inwall:{CRED}".encode()).decode()
    sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("proxy closed the connection")
        head += data
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode(errors="replace"))
    return sock


def _connect_proxy(sock_path: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    return _tunnel(sock, port)


def _connect_bridge(bridge_port: int, port: int) -> socket.socket:
    return _tunnel(_connect_direct(bridge_port), port)


def _download(connect: Connect, size: int) -> float:
    with connect() as sock:
        t0 = time.perf_counter()
        sock.sendall(b"D" + size.to_bytes(8, "big"))
        got = 0
        buf = bytearray(CHUNK)
        while got < size:
            n = sock.recv_into(buf)
            if n == 0:
                raise ConnectionError("short download")
            got += n
        return size / (time.perf_counter() - t0)


def _upload(connect: Connect, size: int) -> float:
    block = b"\0" * CHUNK
    with connect() as sock:
        t0 = time.perf_counter()
        sock.sendall(b"U" + size.to_bytes(8, "big"))
        left = size
        while left > 0:
            n = min(left, CHUNK)
            sock.sendall(block[:n])
            left -= n
        if _recv_exact(sock, 1) != b"k":
            raise ConnectionError("no acknowledgement")
        return size / (time.perf_counter() - t0)


def _latency(connect: Connect, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with connect() as sock:
            sock.sendall(b"Ex")
            _recv_exact(sock, 1)
        out.append(time.perf_counter() - t0)
    return out


def _start(argv: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        proc.kill()
        raise RuntimeError(f"{argv[:3]} did not start")
    return proc, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="MiB per throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per path (best is reported)")
    parser.add_argument("--connections", type=int, default=300, help="connections for the latency figure")
    parser.add_argument("--audit", action="store_true", help="the proxy writes its fsynced audit log")
    parser.add_argument("--role", choices=["origin", "proxy"], help=argparse.SUPPRESS)
    parser.add_argument("--sock", help=argparse.SUPPRESS)
    parser.add_argument("--allow", help=argparse.SUPPRESS)
    parser.add_argument("--audit-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "origin":
        role_origin()
        return 0
    if args.role == "proxy":
        role_proxy(args.sock, args.allow, args.audit_path)
        return 0

    me = [sys.executable, os.path.abspath(__file__)]
    procs: list[subprocess.Popen[str]] = []
    tmp = tempfile.mkdtemp(prefix="eg-bench-", dir="/tmp")
    sock_path = os.path.join(tmp, "p.sock")
    try:
        origin, line = _start([*me, "--role", "origin"])
        procs.append(origin)
        port = int(line)
        proxy_argv = [*me, "--role", "proxy", "--sock", sock_path, "--allow", f"127.0.0.1:{port}"]
        if args.audit:
            proxy_argv += ["--audit-path", os.path.join(tmp, "audit.jsonl")]
        proxy, _ = _start(proxy_argv)
        procs.append(proxy)
        bridge, line = _start([sys.executable, "-I", "-S", str(BRIDGE), sock_path, "127.0.0.1:0"])
        procs.append(bridge)
        bridge_port = int(line.rsplit(":", 1)[1])

        paths = {
            "direct": lambda: _connect_direct(port),
            "proxy": lambda: _connect_proxy(sock_path, port),
            "bridge+proxy": lambda: _connect_bridge(bridge_port, port),
        }
        size = args.mib * 1024 * 1024
        for connect in paths.values():
            _latency(connect, 20)  # warm-up
        # Interleaved, so that noise from the shared 2 cores lands on every path alike.
        down: dict[str, list[float]] = {name: [] for name in paths}
        up: dict[str, list[float]] = {name: [] for name in paths}
        lat: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeat):
            for name, connect in paths.items():
                down[name].append(_download(connect, size))
                up[name].append(_upload(connect, size))
        for _ in range(args.connections):
            for name, connect in paths.items():
                lat[name] += _latency(connect, 1)
        rows = {}
        for name in paths:
            samples = sorted(lat[name])
            p90 = samples[int(len(samples) * 0.9) - 1]
            rows[name] = (max(down[name]), max(up[name]), statistics.median(samples), p90)

        d_down, d_up, d_p50, _ = rows["direct"]
        audit = "audit on" if args.audit else "audit off"
        print(f"egress bench: {args.mib} MiB x{args.repeat} each way, {args.connections} conns, {audit}")
        header = f"{'path':<14}{'down MiB/s':>12}{'ratio':>8}{'up MiB/s':>11}{'ratio':>8}"
        print(header + f"{'lat p50 us':>12}{'ratio':>8}{'p90 us':>9}")
        for name, (r_down, r_up, p50, p90) in rows.items():
            print(
                f"{name:<14}{r_down / 2**20:>12.0f}{r_down / d_down:>8.2f}"
                f"{r_up / 2**20:>11.0f}{r_up / d_up:>8.2f}"
                f"{p50 * 1e6:>12.0f}{p50 / d_p50:>8.2f}{p90 * 1e6:>9.0f}"
            )
        print("ratios: throughput = path / direct (1.00 is free); latency = path / direct (lower is better)")
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stdout is not None:
                proc.stdout.close()
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
