"""The in-sandbox end of egress: loopback TCP proxy ports forwarded to the host proxy's unix socket.

Inside the sandbox's network namespace only loopback exists. Tools find the
proxy through HTTP_PROXY / ALL_PROXY at ``127.0.0.1:3128`` and
``127.0.0.1:1080``; this bridge accepts there and copies each connection,
byte for byte and half-close for half-close, to the unix socket that is
bind-mounted from the host. It makes no decision: the host proxy does.

It runs in the sandbox's init under a bare ``python3 -I -S``, so it is
standard library only, imports nothing from inwall, and uses threads (two per
connection, so neither direction can stall the other). ``Bridge.start()``
returns once every port is listening, so the caller can start the command
without a race; ``close()`` stops accepting, tears down live connections and
joins its threads within a bound.

Run directly: ``python3 -I -S bridge.py UNIX_PATH 127.0.0.1:3128 127.0.0.1:1080``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time

__all__ = ["Bridge", "main", "serve"]

CHUNK = 64 * 1024


def _shutdown(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class Bridge:
    """Forward every TCP connection on *listeners* to a new connection on *unix_path*.

    *stack_size* sets the process-wide thread stack size before the bridge's
    threads start (the sandbox init does nothing else with threads, and small
    stacks keep many connections within a tight address-space limit); pass
    None to leave it alone.
    """

    def __init__(
        self,
        listeners: list[tuple[str, int]],
        unix_path: str,
        *,
        max_connections: int = 256,
        connect_timeout_s: float = 10.0,
        stack_size: int | None = 256 * 1024,
        backlog: int = 128,
    ) -> None:
        self.unix_path = unix_path
        self._listen_on = list(listeners)
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._stack_size = stack_size
        self._backlog = backlog
        self._listeners: list[socket.socket] = []
        self._lock = threading.Lock()
        self._active: dict[int, tuple[socket.socket, socket.socket | None, threading.Thread]] = {}
        self._next_id = 0
        self._closing = False
        self._closed = threading.Event()
        self._wake_r = -1
        self._wake_w = -1
        self._accept_thread: threading.Thread | None = None

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the bridge listens (with the real port when 0 was asked for)."""
        return [sock.getsockname()[:2] for sock in self._listeners]

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._active)

    def start(self) -> None:
        """Bind and listen on every address, then accept in a thread. Raises OSError if a bind fails."""
        if self._accept_thread is not None:
            raise RuntimeError("the bridge is already started")
        try:
            for host, port in self._listen_on:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                sock = socket.socket(family, socket.SOCK_STREAM)
                self._listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(self._backlog)
                sock.setblocking(False)
            self._wake_r, self._wake_w = os.pipe()
        except OSError:
            self._close_listeners()
            raise
        if self._stack_size is not None:
            threading.stack_size(self._stack_size)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="inwall-bridge-accept", daemon=True
        )
        self._accept_thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` has finished (or *timeout* passes); True if it has."""
        return self._closed.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, cut live connections, and join every thread within *timeout* seconds."""
        with self._lock:
            if self._closing:
                already = True
            else:
                already = False
                self._closing = True
        if already:
            self._closed.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(max(0.0, deadline - time.monotonic()))
        self._close_listeners()
        with self._lock:
            live = list(self._active.values())
        for downstream, upstream, _thread in live:
            _shutdown(downstream, socket.SHUT_RDWR)
            if upstream is not None:
                _shutdown(upstream, socket.SHUT_RDWR)
        for _downstream, _upstream, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self._closed.set()

    def __enter__(self) -> Bridge:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()

    def _accept_loop(self) -> None:
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in self._listeners}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _mask in poller.poll():
                if fd == self._wake_r:
                    return
                try:
                    conn, _addr = by_fd[fd].accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # out of fds: let the backlog wait a moment instead of spinning
                    time.sleep(0.05)
                    continue
                self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        # The bridge relays each chunk as it arrives; Nagle would only hold small writes
        # (a proxy's reply, an interactive keystroke) back for the peer's delayed ACK.
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closing or len(self._active) >= self._max:
                conn.close()
                return
            conn_id = self._next_id
            self._next_id += 1
            thread = threading.Thread(
                target=self._serve, args=(conn_id, conn), name="inwall-bridge", daemon=True
            )
            self._active[conn_id] = (conn, None, thread)
        thread.start()

    def _serve(self, conn_id: int, downstream: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._connect(upstream)
            with self._lock:
                if self._closing:
                    return
                self._active[conn_id] = (downstream, upstream, self._active[conn_id][2])
            back = threading.Thread(
                target=self._pump, args=(upstream, downstream), name="inwall-bridge-back", daemon=True
            )
            back.start()
            self._pump(downstream, upstream)
            back.join()
        except OSError:
            pass
        finally:
            upstream.close()
            downstream.close()
            with self._lock:
                self._active.pop(conn_id, None)

    def _connect(self, upstream: socket.socket) -> None:
        """Connect to the proxy, waiting (boundedly) while its accept backlog is full.

        A unix-socket connect with a full backlog fails with EAGAIN instead of
        waiting when the socket is non-blocking, which is what a timeout makes it;
        so connect blocking in short retries until the deadline.
        """
        deadline = time.monotonic() + self._connect_timeout_s
        upstream.setblocking(False)
        delay = 0.001
        while True:
            try:
                upstream.connect(self.unix_path)
                break
            except BlockingIOError:
                if self._closing or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        upstream.setblocking(True)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # One direction broke: cut both so the other pump wakes up and the pair is released.
            _shutdown(src, socket.SHUT_RDWR)
            _shutdown(dst, socket.SHUT_RDWR)


def serve(
    listeners: list[tuple[str, int]],
    unix_path: str,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a bridge until *stop* is set (forever without one). *ready* is set once every port listens."""
    bridge = Bridge(listeners, unix_path)
    bridge.start()
    try:
        if ready is not None:
            ready.set()
        if stop is None:
            bridge.wait()
        else:
            stop.wait()
    finally:
        bridge.close()


def _parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str]) -> int:
    """``bridge.py UNIX_PATH HOST:PORT...``: forward until SIGTERM/SIGINT; says ``ready`` once listening."""
    if len(argv) < 2:
        sys.stderr.write("usage: bridge.py UNIX_PATH HOST:PORT [HOST:PORT...]\n")
        return 2
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bridge = Bridge([_parse_listen(a) for a in argv[1:]], argv[0])
    bridge.start()
    sys.stdout.write("ready " + " ".join(f"{h}:{p}" for h, p in bridge.addresses) + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(3600):
            pass
    finally:
        bridge.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
