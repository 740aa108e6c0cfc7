"""The gateway's side of the WebSocket link as a sans-I/O core over ``wsproto``.

It performs the upgrade (``Authorization: Bearer`` + our subprotocol), answers pings and
closes, and turns binary messages into link bytes while enforcing the link's limits
across fragments, so an edge (or a man in the middle of a plain ``ws://`` hop) cannot
make the gateway buffer an unbounded message. Peer misbehaviour never raises out of
:meth:`WsClient.receive_data`: it becomes a :class:`Failed` event and a queued close frame.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as WsLocalError
from wsproto.utilities import RemoteProtocolError as WsRemoteError

from inwall.errors import LocalProtocolError
from inwall.tunnel.link import (
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    SUBPROTOCOL,
    LinkLimits,
)

__all__ = ["Accepted", "Closed", "Data", "Failed", "Rejected", "WsClient", "WsEvent", "mask_payload"]

_MAX_REJECT_BODY = 4096
_XOR_TABLES = [bytes(a ^ b for a in range(256)) for b in range(256)]


def _mask_translate(data: bytes, key: bytes) -> bytes:
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(out)


def _load_mask() -> Callable[[bytes, bytes], bytes]:
    # Every byte the gateway sends must be XOR-masked (RFC 6455 5.3); in pure Python that
    # is the most expensive step of a bulk upload. websockets ships the same operation in
    # C; use it when it is installed (uvicorn's default WebSocket stack pulls it in).
    try:
        from websockets.speedups import apply_mask
    except ImportError:
        return _mask_translate
    return apply_mask


mask_payload = _load_mask()


@dataclass(frozen=True, slots=True)
class Accepted:
    subprotocol: str | None


@dataclass(frozen=True, slots=True)
class Rejected:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    code: int
    reason: str


WsEvent = Accepted | Rejected | Data | Closed | Failed


class WsClient:
    """One WebSocket client connection: call :meth:`initiate`, then feed bytes and drain events."""

    def __init__(self, *, host: str, target: str, token: str, limits: LinkLimits | None = None) -> None:
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._host = host
        self._target = target
        self._token = token
        self._limits = limits or LinkLimits()
        self._out = bytearray()
        self._message_bytes = 0
        self._reject_status: int | None = None
        self._reject_body = bytearray()
        self.accepted = False
        self.finished = False

    def initiate(self) -> None:
        self._out += self._ws.send(
            Request(
                host=self._host,
                target=self._target,
                subprotocols=[SUBPROTOCOL],
                extra_headers=[(b"authorization", b"Bearer " + self._token.encode())],
            )
        )
        # The token lives in the request bytes only; drop our copy.
        self._token = ""

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def send_message(self, data: bytes) -> None:
        """Queue one binary message.

        Framed here rather than by wsproto, only to mask with :func:`mask_payload`: a single
        unfragmented frame and no extensions, so wsproto's frame state is not involved.
        """
        if not self.accepted or self.finished:
            raise LocalProtocolError("the link is not open")
        size = len(data)
        if size < 126:
            header = bytes((0x82, 0x80 | size))
        elif size < 65536:
            header = bytes((0x82, 0x80 | 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x82, 0x80 | 127)) + size.to_bytes(8, "big")
        key = os.urandom(4)
        self._out += header
        self._out += key
        self._out += mask_payload(data, key)

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (a no-op once the connection is closing or closed)."""
        if self.finished:
            return
        self.finished = True
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=reason[:120]))

    def receive_data(self, data: bytes | None) -> list[WsEvent]:
        """Feed bytes from the socket (``None`` at EOF) and return what happened."""
        try:
            self._ws.receive_data(data)
            return self._drain()
        except (WsRemoteError, WsLocalError) as exc:
            return [self._fail(CLOSE_PROTOCOL_ERROR, f"WebSocket protocol error: {exc}")]

    def _drain(self) -> list[WsEvent]:
        out: list[WsEvent] = []
        chunks: list[bytes] = []
        for event in self._ws.events():
            result = self._handle(event, chunks)
            if result is not None:
                if chunks:
                    out.append(Data(b"".join(chunks)))
                    chunks = []
                out.append(result)
                if isinstance(result, Failed | Closed):
                    return out
        if chunks:
            out.append(Data(b"".join(chunks)))
        return out

    def _handle(self, event: Event, chunks: list[bytes]) -> WsEvent | None:
        if isinstance(event, AcceptConnection):
            if event.subprotocol != SUBPROTOCOL:
                return self._fail(CLOSE_PROTOCOL_ERROR, f"the edge chose subprotocol {event.subprotocol!r}")
            if event.extensions:
                return self._fail(
                    CLOSE_PROTOCOL_ERROR, "the edge enabled a WebSocket extension we did not offer"
                )
            self.accepted = True
            return Accepted(event.subprotocol)
        if isinstance(event, RejectConnection):
            self._reject_status = event.status_code
            if not event.has_body:
                self.finished = True
                return Rejected(event.status_code, b"")
            return None
        if isinstance(event, RejectData):
            room = _MAX_REJECT_BODY - len(self._reject_body)
            self._reject_body += event.data[: max(room, 0)]
            if event.body_finished or len(self._reject_body) >= _MAX_REJECT_BODY:
                self.finished = True
                return Rejected(self._reject_status or 0, bytes(self._reject_body))
            return None
        if isinstance(event, BytesMessage):
            self._message_bytes += len(event.data)
            if self._message_bytes > self._limits.max_message_bytes:
                return self._fail(CLOSE_TOO_BIG, "link message over the size limit")
            if event.message_finished:
                self._message_bytes = 0
            if event.data:
                chunks.append(bytes(event.data))
            return None
        if isinstance(event, TextMessage):
            return self._fail(CLOSE_UNSUPPORTED, "text message on the link")
        if isinstance(event, Ping):
            if self._ws.state is ConnectionState.OPEN:
                self._out += self._ws.send(event.response())
            return None
        if isinstance(event, CloseConnection):
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                self._out += self._ws.send(event.response())
            self.finished = True
            return Closed(event.code, event.reason or "")
        return None  # Pong and anything newer: nothing to do

    def _fail(self, code: int, reason: str) -> Failed:
        if not self.finished and self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=reason[:120]))
        self.finished = True
        return Failed(code, reason)
