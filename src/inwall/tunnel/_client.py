"""The edge's side of one tunnel connection: HTTP/2 client streams carrying httpx2 requests.

This is the one boundary where tunnel errors become ``httpx2`` errors, because that is
what the MCP SDK (and any httpx2 caller) knows how to handle:

* the connection is gone or died mid-request: ``httpx2.ReadError`` / ``WriteError``;
* the gateway reset the stream: ``httpx2.RemoteProtocolError``;
* a timeout from the request's ``timeout`` extension: ``ReadTimeout`` / ``WriteTimeout`` /
  ``PoolTimeout``.

A stream the gateway refused before processing (``REFUSED_STREAM``, or above the
last-stream-id of its GOAWAY) raises :class:`Refused` instead, which the edge retries
on another connection when the request body can be replayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import httpx2

from inwall.tunnel._conn import Connection, Stream, StreamGone
from inwall.tunnel.errors import TunnelClosed, TunnelUnavailable
from inwall.tunnel.link import CLOSE_NORMAL
from inwall.tunnel.links import LinkStream
from inwall.tunnel.mux import CANCEL, NO_ERROR, REFUSED_STREAM, GoAwayReceived, Header, Mux, MuxSettings
from inwall.tunnel.tls import TLSEndpoint

__all__ = ["ClientConnection", "Refused"]

_DROP_REQUEST_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host", b"te"}
)


class Refused(TunnelUnavailable):
    """The gateway did not process this stream; it may be sent elsewhere if its body can be replayed.

    ``fresh`` means no byte of the request body has been consumed yet (refused before the
    stream opened), so even a one-shot streamed body can go to another connection.
    """

    def __init__(self, message: str, *, fresh: bool = False) -> None:
        super().__init__(message)
        self.fresh = fresh


class ClientConnection(Connection):
    """One gateway connection as the edge sees it."""

    def __init__(
        self,
        link: LinkStream,
        tls: TLSEndpoint,
        *,
        settings: MuxSettings,
        ping_interval_s: float,
        dead_after_s: float,
        max_message_bytes: int,
        label: str,
        on_ready: Callable[[ClientConnection], None] | None = None,
        on_unusable: Callable[[ClientConnection], None] | None = None,
    ) -> None:
        super().__init__(
            link,
            tls,
            Mux(client=True, settings=settings),
            ping_interval_s=ping_interval_s,
            dead_after_s=dead_after_s,
            max_message_bytes=max_message_bytes,
            label=label,
        )
        self._on_ready_cb = on_ready
        self._on_unusable_cb = on_unusable
        self.draining = False
        self.assigned = 0
        self._drain_code = CLOSE_NORMAL
        self._drain_reason = "drained"
        self._close_scheduled = False

    # ---- state seen by the edge's pool ------------------------------------------------

    @property
    def active(self) -> int:
        return len(self.streams)

    @property
    def usable(self) -> bool:
        return self.is_open and self._ready.is_set() and not self.draining

    def on_ready(self) -> None:
        if self._on_ready_cb is not None:
            self._on_ready_cb(self)

    def on_goaway(self, event: GoAwayReceived) -> None:
        self._become_unusable()
        for stream in list(self.streams.values()):
            if stream.id > event.last_stream_id and stream.reset is None:
                stream.reset = REFUSED_STREAM
                stream.remote_reset = True
                stream.signal()
        self._close_if_idle()

    def on_teardown(self, error: BaseException) -> None:
        self._become_unusable()

    def drain(self, *, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Stop taking requests, tell the gateway (GOAWAY), close once in-flight streams finish."""
        self._drain_code, self._drain_reason = code, reason
        self._become_unusable()
        if self.is_open and self.mux.initiated:
            self.mux.goaway(debug=reason.encode())
            self.wake_writer()
        self._close_if_idle()

    def _become_unusable(self) -> None:
        if not self.draining:
            self.draining = True
            if self._on_unusable_cb is not None:
                self._on_unusable_cb(self)

    def _close_if_idle(self) -> None:
        if (
            self.draining
            and not self.streams
            and not self._close_scheduled
            and self.is_open
            and self._tg is not None
        ):
            self._close_scheduled = True
            self._tg.start_soon(self._close_after_flush)

    async def _close_after_flush(self) -> None:
        with anyio.move_on_after(1.0):
            await self.flushed()
        self.close(code=self._drain_code, reason=self._drain_reason)

    def release(self, stream: Stream, *, error_code: int = CANCEL) -> None:
        super().release(stream, error_code=error_code)
        self._close_if_idle()

    # ---- one request --------------------------------------------------------------------

    async def request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout") or {}
        try:
            body: bytes | None = request.content
        except httpx2.RequestNotRead:
            body = None
        headers = _request_headers(request)
        pool_s, write_s, read_s = timeouts.get("pool"), timeouts.get("write"), timeouts.get("read")
        with _mapped_errors(request, "pool"):
            stream = await self._open(headers, end_stream=body == b"", wait_s=pool_s)
        try:
            if not body:
                await self.push()  # the HEADERS go now; a streamed body may take its time
            if body is None:
                try:
                    with _mapped_errors(request, "write"):
                        async for chunk in request.stream:  # type: ignore[union-attr]
                            await self._send_body(stream, bytes(chunk), end_stream=False, wait_s=write_s)
                        await self._send_body(stream, b"", end_stream=True, wait_s=write_s)
                except Refused as exc:
                    # Part of a one-shot body is gone: this request cannot be replayed elsewhere.
                    raise httpx2.RemoteProtocolError(
                        "the gateway refused the stream while its body was being sent", request=request
                    ) from exc
            elif body:
                with _mapped_errors(request, "write"):
                    await self._send_body(stream, body, end_stream=True, wait_s=write_s)
            with _mapped_errors(request, "read"):
                response = await self._response(stream, wait_s=read_s)
        except BaseException:
            self.release(stream)
            raise
        return httpx2.Response(
            response.status,
            headers=response.headers,
            stream=_ResponseBody(self, stream, request, read_s),
            extensions={"http_version": b"HTTP/2"},
            request=request,
        )

    async def _open(self, headers: list[Header], *, end_stream: bool, wait_s: float | None) -> Stream:
        while not self.mux.can_open_stream:
            if self.draining or not self.is_open:
                raise Refused(f"the tunnel connection {self.label} is closing", fresh=True)
            await self._window.wait(wait_s)
        stream_id = self.mux.open_stream(headers, end_stream=end_stream)
        stream = Stream(stream_id)
        stream.sent_end = end_stream
        self.streams[stream_id] = stream
        self.assigned += 1
        self._write_needed = True  # the body send (or push() for a bodiless request) flushes it
        return stream

    async def _send_body(
        self, stream: Stream, data: bytes, *, end_stream: bool, wait_s: float | None
    ) -> None:
        try:
            await self.send_stream_data(stream, data, end_stream=end_stream, wait_s=wait_s)
        except StreamGone as exc:
            # A server may answer early and then stop our upload with NO_ERROR.
            if exc.code == NO_ERROR and stream.response is not None:
                return
            raise

    async def _response(self, stream: Stream, *, wait_s: float | None) -> Any:
        while stream.response is None:
            self.check_stream(stream)
            if stream.ended:
                raise StreamGone(0x1, remote=True)
            await stream.wait(wait_s)
        return stream.response


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(
        self, conn: ClientConnection, stream: Stream, request: httpx2.Request, read_s: float | None
    ) -> None:
        self._conn = conn
        self._stream = stream
        self._request = request
        self._read_s = read_s

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            with _mapped_errors(self._request, "read"):
                chunk = await self._conn.next_chunk(self._stream, self._read_s)
            if chunk is None:
                self._conn.release(self._stream)
                return
            yield chunk

    async def aclose(self) -> None:
        self._conn.release(self._stream)


def _request_headers(request: httpx2.Request) -> list[Header]:
    url = request.url
    headers: list[Header] = [
        (b":method", request.method.encode("ascii")),
        (b":scheme", url.scheme.encode("ascii")),
        (b":authority", url.netloc),
        (b":path", url.raw_path or b"/"),
    ]
    for name, value in request.headers.raw:
        lname = name.lower()
        if lname in _DROP_REQUEST_HEADERS and not (lname == b"te" and value.strip().lower() == b"trailers"):
            continue
        headers.append((lname, value))
    return headers


@contextmanager
def _mapped_errors(request: httpx2.Request, phase: str) -> Iterator[None]:
    """Translate tunnel failures into the httpx2 exception a caller of this phase expects."""
    try:
        yield
    except TimeoutError as exc:
        timeout_cls = {"pool": httpx2.PoolTimeout, "write": httpx2.WriteTimeout}.get(
            phase, httpx2.ReadTimeout
        )
        raise timeout_cls(f"tunnel {phase} timed out", request=request) from exc
    except Refused:
        raise
    except StreamGone as exc:
        if exc.code == REFUSED_STREAM:
            raise Refused("the gateway refused the stream before processing it") from exc
        raise httpx2.RemoteProtocolError(
            f"the gateway reset the stream (HTTP/2 error {exc.code})", request=request
        ) from exc
    except TunnelClosed as exc:
        error_cls = httpx2.WriteError if phase == "write" else httpx2.ReadError
        raise error_cls(f"tunnel connection lost: {exc}", request=request) from exc
