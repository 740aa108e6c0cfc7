"""The seam between a tunnel connection and whatever carries its link bytes.

A :class:`LinkStream` moves opaque chunks of the link's byte stream; each ``send`` is
one binary WebSocket message. Three implementations share one contract (and one
conformance suite in the tests):

* :class:`StarletteLink` - the edge's side, over a Starlette ``WebSocket`` served by uvicorn;
* ``WsprotoLink`` (in ``_dial``) - the gateway's side, wsproto over an anyio byte stream;
* :func:`memory_link_pair` - a real in-memory twin, for tests and in-process wiring.

``receive`` raises :class:`TunnelClosed` when the link ends (peer close, EOF, network
failure) and :class:`TunnelProtocolError` when the peer breaks the link's rules (after
closing the WebSocket with the matching code).
"""

from __future__ import annotations

import contextlib
import math
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from inwall.tunnel.errors import TunnelClosed, TunnelProtocolError
from inwall.tunnel.link import (
    CLOSE_NORMAL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    DEFAULT_MAX_MESSAGE_BYTES,
)

__all__ = ["LinkStream", "MemoryLink", "StarletteLink", "memory_link_pair"]


class LinkStream(Protocol):
    async def send(self, data: bytes) -> None:
        """Send one binary message (at most the link's message limit)."""
        ...

    async def receive(self) -> bytes:
        """The next chunk of the peer's bytes."""
        ...

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Close the link (idempotent, never raises)."""
        ...


class StarletteLink:
    """The edge's end of the link: a Starlette ``WebSocket`` that is already accepted."""

    def __init__(self, websocket: WebSocket, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._ws = websocket
        self._max = max_message_bytes
        self._closed = False

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise TunnelClosed("the link is closed")
        try:
            await self._ws.send({"type": "websocket.send", "bytes": data})
        except (WebSocketDisconnect, OSError, RuntimeError) as exc:
            self._closed = True
            raise TunnelClosed("the gateway went away while we were sending") from exc

    async def receive(self) -> bytes:
        if self._closed:
            raise TunnelClosed("the link is closed")
        try:
            message = await self._ws.receive()
        except (OSError, RuntimeError) as exc:
            self._closed = True
            raise TunnelClosed("the gateway went away") from exc
        if message["type"] == "websocket.disconnect":
            self._closed = True
            code = int(message.get("code", 1005))
            raise TunnelClosed(f"the gateway closed the link ({code})", code=code)
        data = message.get("bytes")
        if data is None:
            await self.aclose(CLOSE_UNSUPPORTED, "binary messages only")
            raise TunnelProtocolError("the gateway sent a text message on the link")
        if len(data) > self._max:
            await self.aclose(CLOSE_TOO_BIG, "message over the size limit")
            raise TunnelProtocolError(f"the gateway sent a {len(data)}-byte message (limit {self._max})")
        return bytes(data)

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        if self._ws.application_state is WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await self._ws.close(code, reason[:120])


class MemoryLink:
    """One end of an in-memory link; behaves like a WebSocket link (ordered, message-sized)."""

    def __init__(
        self,
        send: MemoryObjectSendStream[bytes | tuple[int, str]],
        receive: MemoryObjectReceiveStream[bytes | tuple[int, str]],
        *,
        max_message_bytes: int,
    ) -> None:
        self._send = send
        self._receive = receive
        self._max = max_message_bytes
        self._closed = False

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise TunnelClosed("the link is closed")
        if len(data) > self._max:
            raise TunnelProtocolError("message over the size limit")
        try:
            await self._send.send(bytes(data))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise TunnelClosed("the peer went away") from exc

    async def receive(self) -> bytes:
        try:
            item = await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            self._release()
            raise TunnelClosed("the peer went away") from exc
        if isinstance(item, tuple):
            self._release()
            code, reason = item
            raise TunnelClosed(f"the peer closed the link ({code} {reason})", code=code)
        if len(item) > self._max:
            await self.aclose(CLOSE_TOO_BIG, "message over the size limit")
            raise TunnelProtocolError("the peer sent an oversized message")
        return item

    async def aclose(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if not self._closed:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._send.send_nowait((code, reason))
        self._release()

    def _release(self) -> None:
        self._closed = True
        self._send.close()
        self._receive.close()


def memory_link_pair(
    *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, buffer_messages: float = math.inf
) -> tuple[MemoryLink, MemoryLink]:
    """Two connected link ends; ``buffer_messages`` bounds each direction (inf: unbounded)."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes | tuple[int, str]](buffer_messages)
    b_send, a_receive = anyio.create_memory_object_stream[bytes | tuple[int, str]](buffer_messages)
    return (
        MemoryLink(a_send, a_receive, max_message_bytes=max_message_bytes),
        MemoryLink(b_send, b_receive, max_message_bytes=max_message_bytes),
    )
