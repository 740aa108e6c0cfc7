"""The gateway's side of one tunnel connection: each HTTP/2 stream is one ASGI ``http`` call.

The request body is handed to the app as it arrives and its flow-control window is
returned only once the app has taken it (``receive()``); the response is sent as the app
produces it, waiting for window, so a slow edge-side consumer stalls the app's
``send()`` instead of filling memory. Each stream runs in the connection's task group
and dies with it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import anyio

from inwall.errors import LocalProtocolError
from inwall.tunnel._conn import Connection, Signal, Stream, StreamGone
from inwall.tunnel.errors import TunnelClosed
from inwall.tunnel.links import LinkStream
from inwall.tunnel.mux import (
    CANCEL,
    INTERNAL_ERROR,
    NO_ERROR,
    GoAwayReceived,
    Header,
    Mux,
    MuxSettings,
    RequestReceived,
)
from inwall.tunnel.tls import TLSEndpoint

__all__ = ["ASGIApp", "ClientDisconnected", "ServerConnection"]

logger = logging.getLogger("inwall.tunnel")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]

_DROP_RESPONSE_HEADERS = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)


class ServerConnection(Connection):
    """One edge connection as the gateway sees it."""

    def __init__(
        self,
        link: LinkStream,
        tls: TLSEndpoint,
        app: ASGIApp,
        *,
        settings: MuxSettings,
        ping_interval_s: float,
        dead_after_s: float,
        max_message_bytes: int,
        label: str,
    ) -> None:
        super().__init__(
            link,
            tls,
            Mux(client=False, settings=settings),
            ping_interval_s=ping_interval_s,
            dead_after_s=dead_after_s,
            max_message_bytes=max_message_bytes,
            label=label,
        )
        self._app = app
        self.edge_goaway: GoAwayReceived | None = None
        self._idle = Signal()

    def on_request(self, event: RequestReceived) -> None:
        stream = Stream(event.stream_id)
        self.streams[event.stream_id] = stream
        if self._tg is None:
            self.mux.reset_stream(event.stream_id, CANCEL)
            return
        self._tg.start_soon(self._serve, stream, event.headers)

    def on_goaway(self, event: GoAwayReceived) -> None:
        # The edge is closing this connection (revocation, shutdown): finish what is in flight.
        self.edge_goaway = event

    def release(self, stream: Stream, *, error_code: int = CANCEL) -> None:
        super().release(stream, error_code=error_code)
        if not self.streams:
            self._idle.fire()

    async def drain(self, timeout_s: float) -> None:
        """GOAWAY, then wait up to ``timeout_s`` for in-flight streams, then close."""
        if self.is_open and self.mux.initiated:
            self.mux.goaway(debug=b"gateway draining")
            self.wake_writer()
        with anyio.move_on_after(timeout_s):
            while self.streams and self.is_open:
                await self._idle.wait()
        # The last frames of the last response must be on the wire before the close frame.
        with anyio.move_on_after(1.0):
            await self.flushed()
        self.close(code=1001, reason="gateway draining")

    async def _serve(self, stream: Stream, headers: list[Header]) -> None:
        exchange = _Exchange(self, stream)
        try:
            try:
                scope = _scope(headers)
            except ValueError:
                # Inside the try: the stream and the window of any body it carries must be
                # released like any other, or they leak until the connection ends.
                await exchange.simple_response(400, b"bad request\n")
                return
            scope["extensions"] = {"inwall.tunnel": {"stream_id": stream.id, "connection": self.label}}
            await self._app(scope, exchange.receive, exchange.send)
        except (TunnelClosed, StreamGone, ClientDisconnected):
            pass  # the edge or the link went away; nothing to answer
        except Exception:
            logger.exception("the gateway app failed on tunnel stream %d of %s", stream.id, self.label)
            if not exchange.started:
                await exchange.simple_response(500, b"internal server error\n")
        else:
            if not exchange.started:
                logger.error("the gateway app returned without a response on stream %d", stream.id)
                await exchange.simple_response(500, b"internal server error\n")
        finally:
            if exchange.complete:
                # Complete response; stop any upload still in flight without an error.
                self.release(stream, error_code=NO_ERROR)
            else:
                self.release(stream, error_code=INTERNAL_ERROR if exchange.started else CANCEL)


class ClientDisconnected(OSError):
    """``send()`` after the edge reset the stream or the link closed.

    ASGI lets a server raise an ``OSError`` here; staying silent would let an app that
    streams in a loop spin forever without reaching a checkpoint.
    """


class _Exchange:
    """The ``receive`` / ``send`` pair of one stream's ASGI call."""

    def __init__(self, conn: ServerConnection, stream: Stream) -> None:
        self._conn = conn
        self._stream = stream
        self.started = False
        self.complete = False
        self._body_done = False
        self._status = 0
        self._headers: list[Header] = []

    def _gone(self) -> bool:
        return self.complete or self._stream.reset is not None or not self._conn.is_open

    async def receive(self) -> Message:
        stream = self._stream
        if self._gone():
            return {"type": "http.disconnect"}
        if self._body_done:
            # ASGI: after the body, receive() blocks until the client disconnects.
            while not self._gone():
                await stream.wait()
            return {"type": "http.disconnect"}
        try:
            chunk = await self._conn.next_chunk(stream)
        except (StreamGone, TunnelClosed):
            return {"type": "http.disconnect"}
        if chunk is None:
            self._body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        more = not (stream.ended and not stream.chunks)
        self._body_done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise LocalProtocolError("http.response.start sent twice")
            self.started = True
            self._status = int(message["status"])
            self._headers = [
                (bytes(k).lower(), bytes(v))
                for k, v in message.get("headers", ())
                if bytes(k).lower() not in _DROP_RESPONSE_HEADERS
            ]
            if self._stream.reset is not None or not self._conn.is_open:
                raise ClientDisconnected("the edge went away")
            self._conn.mux.send_response(
                self._stream.id, [(b":status", str(self._status).encode()), *self._headers], end_stream=False
            )
            self._conn.wake_writer()
        elif kind == "http.response.body":
            if not self.started:
                raise LocalProtocolError("http.response.body before http.response.start")
            if self.complete:
                raise LocalProtocolError("http.response.body after the response completed")
            more = bool(message.get("more_body", False))
            body = bytes(message.get("body", b""))
            try:
                if self._stream.reset is not None or not self._conn.is_open:
                    raise ClientDisconnected("the edge went away")
                await self._conn.send_stream_data(self._stream, body, end_stream=not more)
            except (StreamGone, TunnelClosed) as exc:
                raise ClientDisconnected("the edge went away") from exc
            finally:
                if not more:
                    # Only now: a receive() waiting for the disconnect must not cut the last send short.
                    self.complete = True
                    self._stream.signal()
        else:
            raise LocalProtocolError(f"unsupported ASGI message {kind!r} on a tunnel stream")

    async def simple_response(self, status: int, body: bytes) -> None:
        if self._gone():
            return
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


def _scope(headers: list[Header]) -> Scope:
    method = scheme = authority = path = b""
    out: list[Header] = []
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":scheme":
            scheme = value
        elif name == b":authority":
            authority = value
        elif name == b":path":
            path = value
        elif name == b"host":
            authority = authority or value
        elif not name.startswith(b":"):
            out.append((name, value))
    if not method or not path or method == b"CONNECT":
        raise ValueError("a tunnel stream needs :method and :path (CONNECT is not served)")
    raw_path, _, query = path.partition(b"?")
    out.insert(0, (b"host", authority))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "2",
        "method": method.decode("ascii"),
        "scheme": (scheme or b"https").decode("ascii"),
        "path": unquote(raw_path.decode("ascii", errors="replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": out,
        "client": None,
        "server": None,
        "extensions": {},
    }
