"""HTTP/2 over the link as a sans-I/O core: one h2 stream per MCP HTTP request.

``h2`` does the framing, HPACK and flow control; this wrapper adds what the tunnel needs
on top:

* windows sized so one stream can fill the link (16 MiB per stream, a larger
  connection window), a bounded frame size and header list size;
* graceful GOAWAY. ``h2`` treats any GOAWAY as "connection closed now", which makes a
  drain impossible, so GOAWAY frames are cut out of the inbound byte stream before
  ``h2`` sees them and reported as :class:`GoAwayReceived`, and outbound ones are
  serialised here and spliced in between whole ``h2`` frames. In-flight streams keep
  flowing both ways until they finish;
* a bound on each header block (HEADERS + CONTINUATION), checked before ``h2``
  buffers it;
* peer misbehaviour never escapes :meth:`Mux.receive_data`: it becomes a
  :class:`ConnectionFailed` event with a GOAWAY queued, and the driver closes the link.

Events are this module's own small dataclasses, not ``h2``'s, whose reprs include
header values (bearer tokens) and must never reach a log.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from hyperframe.frame import GoAwayFrame

from inwall.errors import LocalProtocolError

__all__ = [
    "ConnectionFailed",
    "DataReceived",
    "GoAwayReceived",
    "Header",
    "Mux",
    "MuxEvent",
    "MuxSettings",
    "PingAcknowledged",
    "RequestReceived",
    "ResponseReceived",
    "SettingsAcknowledged",
    "SettingsChanged",
    "StreamEnded",
    "StreamReset",
    "WindowUpdated",
]

Header = tuple[bytes, bytes]

KiB = 1024
MiB = 1024 * KiB
_DEFAULT_WINDOW = 65_535
_MAX_WINDOW = 2**31 - 1
_PREFACE_LEN = 24  # b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_DATA, _HEADERS, _PUSH_PROMISE, _GOAWAY, _CONTINUATION = 0x0, 0x1, 0x5, 0x7, 0x9
_END_HEADERS = 0x4

NO_ERROR = h2.errors.ErrorCodes.NO_ERROR
PROTOCOL_ERROR = h2.errors.ErrorCodes.PROTOCOL_ERROR
INTERNAL_ERROR = h2.errors.ErrorCodes.INTERNAL_ERROR
REFUSED_STREAM = h2.errors.ErrorCodes.REFUSED_STREAM
CANCEL = h2.errors.ErrorCodes.CANCEL
FRAME_SIZE_ERROR = h2.errors.ErrorCodes.FRAME_SIZE_ERROR
ENHANCE_YOUR_CALM = h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


@dataclass(frozen=True, slots=True)
class MuxSettings:
    """Flow-control and size limits for one tunnel connection (both ends use the same defaults)."""

    stream_window: int = 16 * MiB
    connection_window: int = 32 * MiB
    max_frame_size: int = 256 * KiB
    max_header_list_size: int = 64 * KiB
    max_concurrent_streams: int = 1000

    def __post_init__(self) -> None:
        if not 16 * KiB <= self.max_frame_size <= 16 * MiB - 1:
            raise ValueError("max_frame_size must be within HTTP/2's 16 KiB .. 16 MiB - 1")
        if not _DEFAULT_WINDOW <= self.stream_window <= _MAX_WINDOW:
            raise ValueError("stream_window must be within 65535 .. 2**31 - 1")
        if not self.stream_window <= self.connection_window <= _MAX_WINDOW:
            raise ValueError("connection_window must be at least stream_window and at most 2**31 - 1")
        if not 4 * KiB <= self.max_header_list_size <= 16 * MiB:
            raise ValueError("max_header_list_size must be within 4 KiB .. 16 MiB")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be positive")


# ---- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server side: a new stream's request headers (pseudo-headers included, in order)."""

    stream_id: int
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client side: the final response headers (pseudo-headers removed)."""

    stream_id: int
    status: int
    headers: list[Header]


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Body bytes; pass ``flow_length`` to :meth:`Mux.acknowledge` once they are consumed."""

    stream_id: int
    data: bytes
    flow_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """More send window on ``stream_id`` (0: the whole connection)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The peer's SETTINGS arrived; the first one means the peer's HTTP/2 side is up."""


@dataclass(frozen=True, slots=True)
class SettingsAcknowledged:
    """The peer applied our SETTINGS (so it has also seen our preface)."""


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    opaque: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer opens no more streams; streams above ``last_stream_id`` were not processed."""

    last_stream_id: int
    error_code: int
    debug: bytes


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The peer broke HTTP/2; a GOAWAY is queued and nothing else will happen on this connection."""

    error_code: int
    reason: str


MuxEvent = (
    RequestReceived
    | ResponseReceived
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | SettingsChanged
    | SettingsAcknowledged
    | PingAcknowledged
    | GoAwayReceived
    | ConnectionFailed
)


def _install_cheap_frame_repr() -> None:
    """Stop hexlifying every received payload.

    h2 evaluates ``repr(frame)`` for each inbound frame (an argument to its trace log, even
    when logging is off), and hyperframe's repr hexlifies the whole payload before cutting
    it to 10 bytes: on a bulk transfer that costs as much CPU as decrypting it. Hexlifying
    the first 11 bytes yields exactly the same text.
    """
    original = hyperframe.frame._raw_data_repr
    if getattr(original, "_inwall_cheap", False):
        return

    def _raw_data_repr(data: bytes | None) -> str:
        return original(data[:11] if data else data)

    _raw_data_repr._inwall_cheap = True  # type: ignore[attr-defined]  # marker against double install
    hyperframe.frame._raw_data_repr = _raw_data_repr


_install_cheap_frame_repr()


class _Violation(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _FrameSplitter:
    """Walks inbound frame headers: cuts GOAWAY frames out, bounds frames and header blocks.

    DATA payloads are passed through as memoryview slices, so the cost is one 9-byte
    header parse per frame, not a copy of the body.
    """

    def __init__(self, *, skip_preface: bool, max_frame_size: int, max_header_block: int) -> None:
        self._preface_left = _PREFACE_LEN if skip_preface else 0
        self._max_frame_size = max_frame_size
        self._max_header_block = max_header_block
        self._header = bytearray()
        self._passthrough = 0
        self._capture: bytearray | None = None
        self._capture_left = 0
        self._in_header_block = False
        self._header_block = 0

    @property
    def holding(self) -> bool:
        """Whether bytes of a frame header or of a GOAWAY are buffered here, not yet passed on."""
        return bool(self._header) or self._capture is not None

    def feed(
        self, data: bytes | bytearray
    ) -> tuple[list[memoryview | bytes | bytearray], list[GoAwayReceived]]:
        out: list[memoryview | bytes | bytearray] = []
        goaways: list[GoAwayReceived] = []
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n:
            if self._preface_left:
                take = min(self._preface_left, n - i)
                out.append(view[i : i + take])
                self._preface_left -= take
                i += take
                continue
            if self._passthrough:
                take = min(self._passthrough, n - i)
                out.append(view[i : i + take])
                self._passthrough -= take
                i += take
                continue
            if self._capture is not None:
                take = min(self._capture_left, n - i)
                self._capture += view[i : i + take]
                self._capture_left -= take
                i += take
                if not self._capture_left:
                    goaways.append(_parse_goaway(bytes(self._capture)))
                    self._capture = None
                continue
            take = min(9 - len(self._header), n - i)
            self._header += view[i : i + take]
            i += take
            if len(self._header) < 9:
                break
            header = bytes(self._header)
            self._header.clear()
            self._frame(header, out)
        return out, goaways

    def _frame(self, header: bytes, out: list[memoryview | bytes | bytearray]) -> None:
        length = int.from_bytes(header[0:3], "big")
        ftype, flags = header[3], header[4]
        stream_id = int.from_bytes(header[5:9], "big") & 0x7FFF_FFFF
        if length > self._max_frame_size:
            raise _Violation(
                FRAME_SIZE_ERROR, f"frame of {length} bytes over the {self._max_frame_size} limit"
            )
        if ftype in (_HEADERS, _PUSH_PROMISE):
            if self._in_header_block:
                raise _Violation(PROTOCOL_ERROR, "a header block interrupted by another")
            self._header_block = length
            self._in_header_block = not flags & _END_HEADERS
        elif ftype == _CONTINUATION and self._in_header_block:
            self._header_block += length
            self._in_header_block = not flags & _END_HEADERS
        elif self._in_header_block:
            raise _Violation(PROTOCOL_ERROR, "a frame interleaved in a header block")
        if self._header_block > self._max_header_block:
            raise _Violation(ENHANCE_YOUR_CALM, "header block over the size limit")
        if ftype == _GOAWAY:
            if stream_id != 0 or length < 8:
                raise _Violation(PROTOCOL_ERROR, "malformed GOAWAY frame")
            self._capture = bytearray()
            self._capture_left = length
            return
        out.append(header)
        self._passthrough = length


def _parse_goaway(payload: bytes) -> GoAwayReceived:
    last = int.from_bytes(payload[0:4], "big") & 0x7FFF_FFFF
    code = int.from_bytes(payload[4:8], "big")
    return GoAwayReceived(last_stream_id=last, error_code=code, debug=payload[8:][:256])


class Mux:
    """One HTTP/2 connection, client (the edge) or server (the gateway) side."""

    def __init__(self, *, client: bool, settings: MuxSettings | None = None) -> None:
        self.settings = settings or MuxSettings()
        self.client = client
        config = h2.config.H2Configuration(
            client_side=client, header_encoding=None, validate_inbound_headers=True
        )
        self._h2 = h2.connection.H2Connection(config=config)
        codes = h2.settings.SettingCodes
        local: dict[h2.settings.SettingCodes, int] = {
            codes.INITIAL_WINDOW_SIZE: self.settings.stream_window,
            codes.MAX_FRAME_SIZE: self.settings.max_frame_size,
            codes.MAX_HEADER_LIST_SIZE: self.settings.max_header_list_size,
        }
        # Not 0 on the client, although servers may open no streams: h2 applies this limit
        # to HEADERS arriving on a stream it already forgot, so a response racing our
        # RST_STREAM (a timeout, a cancelled call) would kill the whole connection.
        local[codes.MAX_CONCURRENT_STREAMS] = self.settings.max_concurrent_streams
        if client:
            local[codes.ENABLE_PUSH] = 0
        # Initial values take effect at once (they are what the preface announces), so the
        # frame-size and header-list bounds must be applied to h2's parser by hand too.
        self._h2.local_settings = h2.settings.Settings(client=client, initial_values=local)
        self._h2.max_inbound_frame_size = self.settings.max_frame_size
        self._h2.decoder.max_header_list_size = self.settings.max_header_list_size
        self._splitter = _FrameSplitter(
            skip_preface=not client,
            max_frame_size=self.settings.max_frame_size,
            max_header_block=self.settings.max_header_list_size + 16 * KiB,
        )
        self._out = bytearray()
        self._pings = itertools.count(1)
        self.initiated = False
        self.peer_ready = False
        self.settings_acked = False
        self.failed = False
        self.goaway_sent: int | None = None
        self.goaway_received: GoAwayReceived | None = None

    # ---- connection -----------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface/SETTINGS and widen the connection window."""
        if self.initiated:
            raise LocalProtocolError("the HTTP/2 connection is already initiated")
        self.initiated = True
        self._h2.initiate_connection()
        extra = self.settings.connection_window - _DEFAULT_WINDOW
        if extra > 0:
            self._h2.increment_flow_control_window(extra)

    def receive_data(self, data: bytes | bytearray) -> list[MuxEvent]:
        """Feed plaintext from the inner TLS; never raises for the peer's mistakes."""
        if self.failed:
            return []
        try:
            held_before = self._splitter.holding
            pieces, goaways = self._splitter.feed(data)
            if not (goaways or held_before or self._splitter.holding):
                # Nothing cut out and no frame header or GOAWAY straddling this read's
                # edges: the pieces are ``data`` itself, so hand h2 the bytes as they came.
                pieces = [data]
            raw = self._h2.receive_data(b"".join(pieces) if len(pieces) > 1 else pieces[0]) if pieces else []
        except _Violation as exc:
            return [self._fail(exc.code, exc.reason)]
        except h2.exceptions.ProtocolError as exc:
            code = getattr(exc, "error_code", PROTOCOL_ERROR)
            # Only the class: h2's messages can quote header values (an Authorization header
            # with stray whitespace, say), and this text reaches logs and the peer.
            return [self._fail(int(code), f"HTTP/2 protocol error ({type(exc).__name__})")]
        events = self._translate(raw)
        for goaway in goaways:
            self.goaway_received = goaway
            events.append(goaway)
        return events

    def data_to_send(self) -> bytes:
        if self._out:
            self._out += self._h2.data_to_send()
            out = bytes(self._out)
            self._out.clear()
            return out
        return self._h2.data_to_send()

    @property
    def pending(self) -> int:
        """Bytes queued for the peer and not yet taken by :meth:`data_to_send`.

        Asked after every read and every frame sent, so it peeks at h2's buffer instead
        of draining it (draining would copy bulk data one extra time).
        """
        buffered = getattr(self._h2, "_data_to_send", None)
        if buffered is None:  # a future h2 without the attribute: drain instead
            self._out += self._h2.data_to_send()
            return len(self._out)
        return len(self._out) + len(buffered)

    def ping(self) -> bytes:
        opaque = next(self._pings).to_bytes(8, "big")
        self._h2.ping(opaque)
        return opaque

    def goaway(self, *, error_code: int = NO_ERROR, debug: bytes = b"") -> int:
        """Announce a graceful close: the peer opens no new streams; in-flight ones continue.

        Returns the last stream id we will still process (server side: the highest the
        peer opened; client side: 0, as the server opens none).
        """
        last = 0 if self.client else self._h2.highest_inbound_stream_id
        if self.goaway_sent is None:
            self.goaway_sent = last
            self._out += self._h2.data_to_send()
            frame = GoAwayFrame(
                stream_id=0, last_stream_id=last, error_code=error_code, additional_data=debug[:256]
            )
            self._out += frame.serialize()
        return last

    # ---- streams --------------------------------------------------------------------

    @property
    def can_open_stream(self) -> bool:
        """Client side: whether a new stream fits under the peer's concurrency limit now."""
        return (
            self.peer_ready
            and not self.failed
            and self.goaway_received is None
            and self.goaway_sent is None
            and self._h2.open_outbound_streams < self._h2.remote_settings.max_concurrent_streams
        )

    def open_stream(self, headers: Sequence[Header], *, end_stream: bool) -> int:
        if not self.client:
            raise LocalProtocolError("only the client side opens streams")
        if not self.can_open_stream:
            raise LocalProtocolError("no stream can be opened now (limit, GOAWAY or failure)")
        stream_id = self._h2.get_next_available_stream_id()
        self._send_headers(stream_id, headers, end_stream=end_stream)
        return stream_id

    def send_response(self, stream_id: int, headers: Sequence[Header], *, end_stream: bool) -> None:
        if self.client:
            raise LocalProtocolError("only the server side sends responses")
        self._send_headers(stream_id, headers, end_stream=end_stream)

    def _send_headers(self, stream_id: int, headers: Sequence[Header], *, end_stream: bool) -> None:
        try:
            self._h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise LocalProtocolError(f"cannot send headers on stream {stream_id}: {exc}") from exc

    def send_data(self, stream_id: int, data: bytes | memoryview, *, end_stream: bool = False) -> int:
        """Queue as much of ``data`` as the windows allow; returns how many bytes were taken.

        ``end_stream`` applies only once the last byte is taken (an empty ``data`` with
        ``end_stream`` just ends the stream: that needs no window).
        """
        try:
            if not data:
                if end_stream:
                    self._h2.end_stream(stream_id)
                return 0
            take = min(len(data), self._h2.local_flow_control_window(stream_id))
            frame = self._h2.max_outbound_frame_size
            view = memoryview(data)
            sent = 0
            while sent < take:
                size = min(frame, take - sent)
                last = end_stream and sent + size == len(data)
                self._h2.send_data(stream_id, view[sent : sent + size], end_stream=last)
                sent += size
        except h2.exceptions.ProtocolError as exc:
            raise LocalProtocolError(f"cannot send data on stream {stream_id}: {exc}") from exc
        return take

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = CANCEL) -> None:
        """Abort a stream; resetting one that is already closed is a no-op."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, error_code)

    def acknowledge(self, stream_id: int, flow_length: int) -> None:
        """Give ``flow_length`` bytes of window back once the application has consumed them."""
        if flow_length and not self.failed:
            self._h2.acknowledge_received_data(flow_length, stream_id)

    # ---- internals ------------------------------------------------------------------

    def _fail(self, code: int, reason: str) -> ConnectionFailed:
        self.failed = True
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(error_code=code, additional_data=reason.encode()[:256])
        return ConnectionFailed(error_code=code, reason=reason)

    def _translate(self, raw: list[h2.events.Event]) -> list[MuxEvent]:
        out: list[MuxEvent] = []
        for ev in raw:
            if isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                out.append(DataReceived(ev.stream_id, ev.data, ev.flow_controlled_length or 0))
            elif isinstance(ev, h2.events.RequestReceived):
                if self.goaway_sent is not None and ev.stream_id > self.goaway_sent:
                    self.reset_stream(ev.stream_id, REFUSED_STREAM)
                    continue
                out.append(RequestReceived(ev.stream_id, [(bytes(k), bytes(v)) for k, v in ev.headers]))
            elif isinstance(ev, h2.events.ResponseReceived):
                status = 0
                headers: list[Header] = []
                for k, v in ev.headers:
                    if k == b":status":
                        status = int(v) if len(v) == 3 and bytes(v).isdigit() else 0
                    elif not k.startswith(b":"):
                        headers.append((bytes(k), bytes(v)))
                if not 200 <= status <= 599:
                    self.reset_stream(ev.stream_id, PROTOCOL_ERROR)
                    out.append(StreamReset(ev.stream_id, PROTOCOL_ERROR, remote=False))
                    continue
                out.append(ResponseReceived(ev.stream_id, status, headers))
            elif isinstance(ev, h2.events.StreamEnded):
                assert ev.stream_id is not None
                out.append(StreamEnded(ev.stream_id))
            elif isinstance(ev, h2.events.StreamReset):
                assert ev.stream_id is not None
                out.append(StreamReset(ev.stream_id, int(ev.error_code or 0), bool(ev.remote_reset)))
            elif isinstance(ev, h2.events.WindowUpdated):
                out.append(WindowUpdated(ev.stream_id or 0))
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.peer_ready = True
                out.append(SettingsChanged())
            elif isinstance(ev, h2.events.SettingsAcknowledged):
                self.settings_acked = True
                out.append(SettingsAcknowledged())
            elif isinstance(ev, h2.events.PingAckReceived):
                out.append(PingAcknowledged(bytes(ev.ping_data or b"")))
            # Informational (1xx) responses, trailers, priority, unknown frames and ping
            # requests (h2 acks them itself) need nothing from us.
        return out
