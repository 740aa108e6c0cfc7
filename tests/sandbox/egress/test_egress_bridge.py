"""The in-sandbox bridge: many concurrent connections, half-close, clean shutdown, script mode."""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

import inwall.sandbox.egress.bridge as bridge_module
from inwall.sandbox.egress.bridge import Bridge

BRIDGE_FILE = Path(bridge_module.__file__)
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(10)
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            return


class _EchoServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    block_on_close = False


@contextmanager
def unix_echo(path: Path) -> Iterator[_EchoServer]:
    server = _EchoServer(str(path), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("inwall-bridge")]


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_many_concurrent_connections_round_trip(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    with unix_echo(path):
        bridge = Bridge([("127.0.0.1", 0), ("127.0.0.1", 0)], str(path), stack_size=None)
        bridge.start()
        ports = [port for _host, port in bridge.addresses]
        payloads = [os.urandom(20_000 + i) for i in range(120)]
        with ThreadPoolExecutor(max_workers=60) as pool:
            results = list(pool.map(lambda ip: round_trip(ports[ip[0] % 2], ip[1]), enumerate(payloads)))
        bridge.close()
    assert results == payloads
    assert bridge.active_connections == 0
    assert bridge_threads() == []
    assert bridge.wait(0)


def test_close_cuts_live_connections_and_joins_threads(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    with unix_echo(path):
        bridge = Bridge([("127.0.0.1", 0)], str(path), stack_size=None)
        bridge.start()
        port = bridge.addresses[0][1]
        clients = []
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"ping%d" % i)
            assert sock.recv(100) == b"ping%d" % i  # the whole path is live
            clients.append(sock)
        assert bridge.active_connections == 20
        bridge.close(timeout=5)
        for sock in clients:
            with suppress(ConnectionResetError):
                assert sock.recv(100) == b""
            sock.close()
    assert bridge_threads() == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_missing_unix_socket_closes_the_connection_and_the_bridge_lives_on(sock_dir: Path) -> None:
    path = sock_dir / "later.sock"
    with Bridge([("127.0.0.1", 0)], str(path), stack_size=None) as bridge:
        port = bridge.addresses[0][1]
        with suppress(ConnectionResetError):  # nothing behind it yet: closed (or reset), not hung
            assert round_trip(port, b"hello") == b""
        with unix_echo(path):
            assert round_trip(port, b"hello") == b"hello"
    assert bridge_threads() == []


def test_connection_cap(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    with unix_echo(path), Bridge([("127.0.0.1", 0)], str(path), max_connections=2, stack_size=None) as bridge:
        port = bridge.addresses[0][1]
        held = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            held.append(sock)
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as extra,
            suppress(ConnectionResetError),
        ):
            assert extra.recv(1) == b""
        for sock in held:
            sock.close()


def test_bind_failure_raises_and_leaks_nothing(sock_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = Bridge([("127.0.0.1", 0), ("127.0.0.1", port)], str(sock_dir / "x.sock"), stack_size=None)
        with pytest.raises(OSError):
            bridge.start()
    assert bridge_threads() == []


def test_serve_runs_until_stopped(sock_dir: Path) -> None:
    path = sock_dir / "echo.sock"
    ready, stop = threading.Event(), threading.Event()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with unix_echo(path):
        thread = threading.Thread(
            target=bridge_module.serve,
            args=([("127.0.0.1", port)], str(path)),
            kwargs={"ready": ready, "stop": stop},
        )
        thread.start()
        assert ready.wait(5)
        assert round_trip(port, b"abc") == b"abc"
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert bridge_threads() == []


def test_script_mode_under_bare_system_python(sock_dir: Path) -> None:
    """How the sandbox init may run it: no site, no inwall, no anyio — and SIGTERM ends it cleanly."""
    path = sock_dir / "echo.sock"
    with unix_echo(path):
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-I", "-S", str(BRIDGE_FILE), str(path), "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("ready 127.0.0.1:")
            port = int(line.split(":")[-1])
            assert round_trip(port, b"through the script") == b"through the script"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def test_import_needs_only_the_standard_library() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bridge; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'anyio', 'inwall', 'idna', 'asyncio'}))"
    )
    out = subprocess.run(
        [SYSTEM_PYTHON, "-I", "-S", "-c", code, str(BRIDGE_FILE.parent)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.strip() == "[]"
