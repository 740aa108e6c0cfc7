"""Raw-socket byte streams and a unix listener for the proxy, on ``anyio.wait_readable``/``wait_writable``.

Two reasons not to use anyio's own socket classes here:

* anyio 4.16's asyncio UNIX socket stream parks a reader callback that calls
  ``Future.set_result`` on a future cancellation may already have completed;
  when a peer's bytes (or EOF) land in the same loop iteration as a cancel —
  exactly what happens when a sandbox ends and its proxy shuts down — the loop
  reports ``InvalidStateError`` (the family of anyio issue #1267, whose fix
  covered ``aclose`` only). ``wait_readable``/``wait_writable`` guard that case.
* ``anyio.connect_tcp`` runs happy-eyeballs machinery (a task group, events, a
  transport) per connection; the proxy dials one checked address at a time, so
  a plain non-blocking connect is enough and costs a fraction of the latency.
"""

from __future__ import annotations

import os
import socket

import anyio
from anyio.abc import ByteStream
from anyio.lowlevel import checkpoint

from inwall.sandbox.egress.addresses import IPAddress

__all__ = ["RawStream", "UnixListener", "connect_tcp"]


class RawStream(ByteStream):
    """A connected stream socket as an anyio ByteStream (one reader and one writer at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self._sock.recv(max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        await checkpoint()
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self._sock)
                continue
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await checkpoint()


class UnixListener:
    """Accept loop over a bound, listening unix socket; closing it wakes a pending ``accept``."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def accept(self) -> RawStream:
        await checkpoint()
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                conn, _addr = self._sock.accept()
            except BlockingIOError:
                await anyio.wait_readable(self._sock)
                continue
            return RawStream(conn)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await checkpoint()

    async def __aenter__(self) -> UnixListener:
        return self

    async def __aexit__(self, *exc: object) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


async def connect_tcp(address: IPAddress, port: int) -> RawStream:
    """Dial exactly *address* (no name resolution anywhere), with TCP_NODELAY; OSError on failure.

    Callers bound the wait with a cancel scope; a cancelled connect closes the socket.
    """
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((str(address), port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err)) from None
        else:
            await checkpoint()
        return RawStream(sock)
    except BaseException:
        sock.close()
        raise
