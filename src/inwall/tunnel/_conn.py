"""The anyio driver of one tunnel connection: link bytes through the TLS and HTTP/2 cores.

Three tasks per connection, all in the connection's own task group:

* the reader never blocks on anything but the link, so the peer can always make
  progress and control frames (WINDOW_UPDATE, PING ACK) are never stuck behind a
  stalled stream;
* the writer flushes what the reader and the keepalive queue (WINDOW_UPDATE, PING ACK,
  RST_STREAM). Stream producers (a request, an ASGI ``send``) flush their own frames in
  their own task (:meth:`Connection.push`), which saves a task hop per message, and wait
  whenever more than ``_HIGH_WATER`` bytes are queued. Only one flush runs at a time.
  Together with HTTP/2 flow control this bounds memory on both sides: a slow consumer
  stops its stream's window, which stops the producer's ``send``;
* the keepalive task pings an idle peer and ends the connection when the peer has been
  silent for ``dead_after_s``.

Any failure ends this connection only: the task group is cancelled, every stream is
failed with the cause, and the link is closed with a code that says why.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from inwall.errors import InwallError
from inwall.tunnel.errors import (
    GatewayCertificateRejected,
    TunnelClosed,
    TunnelProtocolError,
)
from inwall.tunnel.link import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_PROTOCOL_ERROR,
    split_messages,
)
from inwall.tunnel.links import LinkStream
from inwall.tunnel.liveness import Liveness, LivenessAction
from inwall.tunnel.mux import (
    CANCEL,
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    Mux,
    MuxEvent,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    SettingsAcknowledged,
    SettingsChanged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from inwall.tunnel.tls import TLSEndpoint

logger = logging.getLogger("inwall.tunnel")

_HIGH_WATER = 1024 * 1024
"""Queued outbound bytes above which producers wait for a flush."""

_OUTBOUND_CAP = 8 * 1024 * 1024
"""Queued bytes beyond which a peer that makes us answer (pings, settings) but never reads is cut off."""


class StreamGone(InwallError):
    """The stream was reset (by either side); ``code`` is the HTTP/2 error code.

    Internal: the edge turns it into an httpx2 error, the gateway into a disconnect.
    """

    def __init__(self, code: int, *, remote: bool) -> None:
        super().__init__(f"stream reset (HTTP/2 error {code})")
        self.code = code
        self.remote = remote


class Signal:
    """An edge-triggered wake-up that allocates an event only when somebody waits.

    Waiters check their condition, then ``await wait()`` with no checkpoint in between,
    so a ``fire()`` can never be missed. Requests fire many signals nobody waits for;
    making those free is worth it on the per-call latency path.
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None

    def fire(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def wait(self, wait_s: float | None = None) -> None:
        if self._event is None:
            self._event = anyio.Event()
        event = self._event
        if wait_s is None:
            await event.wait()
        else:
            with anyio.fail_after(wait_s):
                await event.wait()


class Stream:
    """Per-stream state shared by the reader (producer of events) and the stream's task."""

    __slots__ = ("_wake", "chunks", "ended", "id", "remote_reset", "reset", "response", "sent_end")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.chunks: deque[tuple[bytes, int]] = deque()
        self.ended = False
        self.sent_end = False
        self.reset: int | None = None
        self.remote_reset = False
        self.response: ResponseReceived | None = None
        self._wake = Signal()

    def signal(self) -> None:
        self._wake.fire()

    async def wait(self, wait_s: float | None = None) -> None:
        await self._wake.wait(wait_s)

    @property
    def finished(self) -> bool:
        return self.reset is not None or (self.ended and self.sent_end)


class Connection:
    """Role-neutral connection machinery; the edge and gateway subclasses add the stream logic."""

    def __init__(
        self,
        link: LinkStream,
        tls: TLSEndpoint,
        mux: Mux,
        *,
        ping_interval_s: float,
        dead_after_s: float,
        max_message_bytes: int,
        label: str,
    ) -> None:
        self.link = link
        self.tls = tls
        self.mux = mux
        self.label = label
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        # Validate now, not when the keepalive task starts.
        Liveness(interval_s=ping_interval_s, dead_after_s=dead_after_s, now=0.0)
        self._max_message = max_message_bytes
        self.streams: dict[int, Stream] = {}
        self._tg: TaskGroup | None = None
        self._write_needed = False
        self._writer_wake = Signal()
        self._drained = Signal()
        self._window = Signal()
        self._ready = anyio.Event()
        self.closed = anyio.Event()
        self.failure: BaseException | None = None
        self._close_code = CLOSE_GOING_AWAY
        self._close_reason = ""
        self._closing = False
        self._writing = False

    # ---- lifecycle --------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until the link ends; ``started()`` once both TLS and the peer's HTTP/2 are up.

        Returns normally after :meth:`close`; raises the cause otherwise (a
        :class:`TunnelClosed`, :class:`TunnelProtocolError` or
        :class:`GatewayCertificateRejected`).
        """
        self._liveness = Liveness(
            interval_s=self._ping_interval_s, dead_after_s=self._dead_after_s, now=anyio.current_time()
        )
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._guard, self._writer)
                tg.start_soon(self._guard, self._reader)
                tg.start_soon(self._guard, self._keepalive)
                if not self.tls.server_side:
                    self._guard_sync(self.tls.do_handshake)
                    self.wake_writer()
                await self._ready.wait()
                self.on_ready()
                task_status.started()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._teardown()
        if self.failure is not None:
            raise self.failure

    def close(self, *, code: int = CLOSE_GOING_AWAY, reason: str = "") -> None:
        """End the connection now (streams still open are failed); ``run`` then returns."""
        if self._closing:
            return
        self._closing = True
        self._close_code, self._close_reason = code, reason
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    def on_ready(self) -> None:
        """Hook: TLS and HTTP/2 are up in both directions."""

    @property
    def is_open(self) -> bool:
        return self.failure is None and not self._closing and not self.closed.is_set()

    async def _teardown(self) -> None:
        error = self.failure or TunnelClosed(f"the tunnel connection {self.label} closed")
        if isinstance(self.failure, TunnelClosed):
            code, reason = self.failure.code or CLOSE_GOING_AWAY, ""
        elif isinstance(self.failure, GatewayCertificateRejected):
            code, reason = CLOSE_POLICY, "inner TLS: certificate not trusted"
        elif isinstance(self.failure, TunnelProtocolError):
            code, reason = CLOSE_PROTOCOL_ERROR, "protocol error"
        elif self.failure is not None:
            code, reason = CLOSE_INTERNAL_ERROR, "internal error"
        else:
            code, reason = self._close_code, self._close_reason
        self.on_teardown(error)
        for stream in self.streams.values():
            stream.signal()
        self._window.fire()
        self._drained.fire()
        self.closed.set()
        with anyio.move_on_after(1.0):
            if not isinstance(self.failure, TunnelClosed):
                # Best effort: tell the peer why (a GOAWAY, a TLS alert) before closing.
                with contextlib.suppress(
                    InwallError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError
                ):
                    await self._flush()
            await self.link.aclose(code, reason)

    def on_teardown(self, error: BaseException) -> None:
        """Hook: the connection is over; ``error`` is what waiting streams should raise."""

    async def _guard(self, fn: Any) -> None:
        try:
            await fn()
        except (
            InwallError,
            OSError,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.EndOfStream,
        ) as exc:
            self._fail(exc)
        except Exception as exc:  # any bug in one connection must close only that connection
            logger.exception("tunnel connection %s failed unexpectedly", self.label)
            self._fail(exc)

    def _guard_sync(self, fn: Any) -> None:
        try:
            fn()
        except InwallError as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None and not self._closing:
            if isinstance(
                exc, anyio.BrokenResourceError | anyio.ClosedResourceError | anyio.EndOfStream | OSError
            ):
                wrapped = TunnelClosed(f"the link of {self.label} broke: {type(exc).__name__}")
                wrapped.__cause__ = exc
                exc = wrapped
            self.failure = exc
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # ---- the three tasks --------------------------------------------------------------

    def wake_writer(self) -> None:
        self._write_needed = True
        self._writer_wake.fire()

    async def _writer(self) -> None:
        while True:
            while not self._write_needed or self._writing:
                await self._writer_wake.wait()
            await self._flush_once()

    async def push(self) -> None:
        """Producers: put what is queued on the link now, in this task.

        Saves the hop to the writer task on every request and response. If a flush is
        already running, the writer task picks the bytes up after it. The flush is
        shielded: bytes already taken from the TLS layer must reach the link whole, or the
        byte stream is corrupt for every stream on the connection. The shield also keeps
        the keepalive's cancellation out, so it has its own limit: a link that takes no
        message for ``dead_after_s`` (a peer that stopped reading) fails the connection
        (the cut-off bytes no longer matter) and the send raises :class:`TunnelClosed`.
        The limit is on progress, not on the whole flush, which may carry other
        producers' frames for as long as they keep coming.
        """
        if self._writing or not self.is_open:
            self.wake_writer()
            return
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + self._dead_after_s) as scope:
            await self._flush_once(progress=scope)
        if scope.cancelled_caught:
            failure = TunnelClosed(f"the peer of {self.label} read nothing for {self._dead_after_s:g}s")
            self._fail(failure)
            raise failure

    async def _flush_once(self, *, progress: anyio.CancelScope | None = None) -> None:
        self._write_needed = False
        self._writing = True
        try:
            await self._flush(progress=progress)
        finally:
            self._writing = False
        if self._write_needed:
            self._writer_wake.fire()
        self._drained.fire()

    async def flushed(self) -> None:
        """Wait until everything queued so far is on the link (not just taken by the writer)."""
        while self.is_open and (
            self._writing or self._write_needed or self.mux.pending or self.tls.pending_ciphertext
        ):
            await self._drained.wait()

    async def _flush(self, *, progress: anyio.CancelScope | None = None) -> None:
        """Put everything queued on the link; each message sent moves ``progress``'s deadline on."""
        while True:
            plain = self.mux.data_to_send()
            if plain:
                self.tls.write(plain)
            cipher = self.tls.ciphertext_to_send()
            if not cipher:
                return
            for piece in split_messages(cipher, self._max_message):
                await self.link.send(piece)
                if progress is not None:
                    progress.deadline = anyio.current_time() + self._dead_after_s

    async def _reader(self) -> None:
        link, tls, mux = self.link, self.tls, self.mux
        while True:
            data = await link.receive()
            self._liveness.received(anyio.current_time())
            tls.receive_ciphertext(data)
            if not tls.handshake_complete:
                if not tls.do_handshake():
                    self.wake_writer()
                    continue
                mux.initiate()
            plain = tls.read()
            if plain:
                for event in mux.receive_data(plain):
                    self._dispatch(event)
            if tls.peer_closed:
                raise TunnelClosed(f"the peer closed the inner TLS session of {self.label}")
            pending = mux.pending
            if pending or tls.pending_ciphertext:
                self.wake_writer()
                if pending > _OUTBOUND_CAP:
                    raise TunnelProtocolError(
                        "the peer keeps sending frames that need answers but reads nothing"
                    )

    async def _keepalive(self) -> None:
        while True:
            now = anyio.current_time()
            action, next_at = self._liveness.poll(now)
            if action is LivenessAction.DEAD:
                raise TunnelClosed(
                    f"no traffic on {self.label} for {self._dead_after_s:g}s: the link is dead"
                )
            if action is LivenessAction.PING and mux_usable(self.mux):
                self.mux.ping()
                self.wake_writer()
            await anyio.sleep(max(next_at - now, 0.0))

    # ---- events -----------------------------------------------------------------------

    def _dispatch(self, event: MuxEvent) -> None:
        if isinstance(event, DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.reset is not None:
                self.mux.acknowledge(event.stream_id, event.flow_length)
                return
            stream.chunks.append((event.data, event.flow_length))
            stream.signal()
        elif isinstance(event, WindowUpdated | SettingsChanged | SettingsAcknowledged):
            # Ready when the peer's SETTINGS arrived; the server also waits for the ACK of
            # its own, which the client sends after it became ready - so by the time the
            # gateway reports "up", the edge already routes to this connection.
            if (
                not self._ready.is_set()
                and self.mux.peer_ready
                and (self.mux.client or self.mux.settings_acked)
            ):
                self._ready.set()
            self._signal_window()
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.signal()
            self._signal_window()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset = event.error_code
                stream.remote_reset = event.remote
                self._drop_chunks(stream)
                stream.signal()
            self._signal_window()
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.response = event
                stream.signal()
        elif isinstance(event, RequestReceived):
            self.on_request(event)
        elif isinstance(event, GoAwayReceived):
            self.on_goaway(event)
            self._signal_window()
        elif isinstance(event, ConnectionFailed):
            raise TunnelProtocolError(f"the peer broke HTTP/2 on {self.label}: {event.reason}")
        elif isinstance(event, PingAcknowledged):
            pass

    def on_request(self, event: RequestReceived) -> None:
        """Hook (server side): a new stream."""
        self.mux.reset_stream(event.stream_id, CANCEL)

    def on_goaway(self, event: GoAwayReceived) -> None:
        """Hook: the peer will open no more streams / process none above ``last_stream_id``."""

    def _signal_window(self) -> None:
        self._window.fire()

    # ---- stream helpers used by both roles --------------------------------------------

    def check_stream(self, stream: Stream) -> None:
        if self.failure is not None:
            raise TunnelClosed(f"the tunnel connection {self.label} failed: {self.failure}") from self.failure
        if self._closing or self.closed.is_set():
            raise TunnelClosed(f"the tunnel connection {self.label} closed")
        if stream.reset is not None:
            raise StreamGone(stream.reset, remote=stream.remote_reset)

    async def send_stream_data(
        self, stream: Stream, data: bytes, *, end_stream: bool, wait_s: float | None = None
    ) -> None:
        """Send ``data`` on ``stream`` as flow control allows; returns once it is on the link
        (or queued behind a flush in progress).

        ``wait_s`` bounds each wait for window (``TimeoutError``), not the whole send.
        """
        remaining = memoryview(data)
        while True:
            self.check_stream(stream)
            if not remaining:
                if end_stream:
                    self.mux.end_stream(stream.id)
                    stream.sent_end = True
                    self._write_needed = True
                break
            taken = self.mux.send_data(stream.id, remaining, end_stream=end_stream)
            if taken:
                remaining = remaining[taken:]
                self._write_needed = True
                if not remaining:
                    stream.sent_end = stream.sent_end or end_stream
                    break
                if self.mux.pending >= _HIGH_WATER:
                    await self._flush_some()
            else:
                # Out of window: what is queued must reach the peer, or no window comes back.
                await self.push()
                await self._window.wait(wait_s)
        await self._flush_some()

    async def _flush_some(self) -> None:
        """Flush now; above the high-water mark, also wait for a flush run by someone else."""
        if self._write_needed:
            await self.push()
        while self.mux.pending >= _HIGH_WATER and self.is_open:
            await self._drained.wait()

    async def next_chunk(self, stream: Stream, wait_s: float | None = None) -> bytes | None:
        """The next body bytes (all that is buffered), or None at the end; raises if reset or closed.

        ``wait_s`` bounds the wait for data (``TimeoutError``); buffered data costs no wait.
        """
        while True:
            if stream.chunks:
                if len(stream.chunks) == 1:
                    data, flow = stream.chunks.popleft()
                else:
                    parts = list(stream.chunks)
                    stream.chunks.clear()
                    data = b"".join(p[0] for p in parts)
                    flow = sum(p[1] for p in parts)
                self.mux.acknowledge(stream.id, flow)
                if self.mux.pending:
                    self.wake_writer()
                return data
            self.check_stream(stream)
            if stream.ended:
                return None
            await stream.wait(wait_s)

    def _drop_chunks(self, stream: Stream) -> None:
        flow = sum(p[1] for p in stream.chunks)
        stream.chunks.clear()
        if flow:
            self.mux.acknowledge(stream.id, flow)

    def release(self, stream: Stream, *, error_code: int = CANCEL) -> None:
        """Forget ``stream``; reset it first if either direction is still open."""
        if self.streams.pop(stream.id, None) is None:
            return
        self._drop_chunks(stream)
        if self.is_open:
            if not stream.finished:
                self.mux.reset_stream(stream.id, error_code)
                stream.reset = error_code
            if self.mux.pending:
                self.wake_writer()
        self._signal_window()


def mux_usable(mux: Mux) -> bool:
    return mux.initiated and not mux.failed
