"""In-process fan-out of committed events to live streams and waiting pollers.

Publishing never blocks: every subscriber has a bounded buffer, and one that
falls behind is cut off (its stream ends), so its client reconnects and
reconciles against the event list — exactly what the SDK's tool runner does.
A slow reader can therefore never stall the turn loop or another session.

Only committed data is published, so a subscriber that reads the database
after a wake-up always finds what woke it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["EventBus", "Published", "Subscription"]

log = logging.getLogger(__name__)

Event = dict[str, Any]


class _Signal:
    """A level-triggered wake-up: ``notify`` sets it, a waiter clears it."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()

    def take(self) -> bool:
        """Clear and report a pending wake-up without waiting (no await: atomic on the event loop)."""
        fired = self._event.is_set()
        if fired:
            self._event = anyio.Event()
        return fired

    async def wait(self, timeout_s: float) -> bool:
        with anyio.move_on_after(timeout_s):
            await self._event.wait()
        fired = self._event.is_set()
        if fired:
            self._event = anyio.Event()
        return fired


class Published:
    """A committed event as each live stream of its session receives it: one object for all.

    A tool call's stream has at least two readers (the worker and the client), and
    an event can hold a megabyte (an offload write): the first stream to send it
    encodes it, the others reuse those bytes.
    """

    __slots__ = ("_wire", "body")

    def __init__(self, body: Event) -> None:
        self.body = body
        self._wire: bytes | None = None

    @property
    def type(self) -> str:
        return str(self.body.get("type", ""))

    def wire(self, encode: Callable[[Event], bytes]) -> bytes:
        """The event's bytes on the wire (there is one wire format, so one encoder)."""
        if self._wire is None:
            self._wire = encode(self.body)
        return self._wire


class Subscription:
    """One live reader of a session's events; ``close`` is idempotent."""

    def __init__(
        self,
        bus: EventBus,
        session_id: str,
        send: MemoryObjectSendStream[Published],
        receive: MemoryObjectReceiveStream[Published],
    ) -> None:
        self._bus = bus
        self._session_id = session_id
        self._send = send
        self.events = receive

    def close(self) -> None:
        self._bus._drop(self._session_id, self._send)
        self._send.close()
        self.events.close()


class EventBus:
    def __init__(self, *, buffer: int = 1024) -> None:
        self._buffer = buffer
        self.on_wake: Callable[[str], None] | None = None
        self._subscribers: dict[str, set[MemoryObjectSendStream[Published]]] = defaultdict(set)
        self._work_waiters: dict[str, set[anyio.Event]] = defaultdict(set)
        self._session_signals: dict[str, _Signal] = defaultdict(_Signal)

    # -- session event streams -------------------------------------------------

    def open(self, session_id: str) -> Subscription:
        """Subscribe now (synchronously, so nothing published after this call is missed)."""
        send, receive = anyio.create_memory_object_stream[Published](max_buffer_size=self._buffer)
        self._subscribers[session_id].add(send)
        return Subscription(self, session_id, send, receive)

    def _drop(self, session_id: str, send: MemoryObjectSendStream[Published]) -> None:
        subs = self._subscribers.get(session_id)
        if subs is not None:
            subs.discard(send)
            if not subs:
                del self._subscribers[session_id]

    def publish(self, session_id: str, events: list[Event]) -> None:
        subscribers = list(self._subscribers.get(session_id, ()))
        published = [Published(ev) for ev in events] if subscribers else []
        for send in subscribers:
            for ev in published:
                try:
                    send.send_nowait(ev)
                except anyio.WouldBlock:
                    log.warning("event stream subscriber fell behind; closing it session_id=%s", session_id)
                    send.close()
                    self._subscribers[session_id].discard(send)
                    break
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    self._subscribers[session_id].discard(send)
                    break
        self.wake_session(session_id)

    def close_session(self, session_id: str) -> None:
        """End every live stream of a session (after its final event was published)."""
        for send in self._subscribers.pop(session_id, set()):
            send.close()

    def close_all(self) -> None:
        """End every live stream: the server is shutting down and must not wait on idle readers."""
        for session_id in list(self._subscribers):
            self.close_session(session_id)

    # -- turn-loop wake-ups ----------------------------------------------------

    def wake_session(self, session_id: str) -> None:
        self._session_signals[session_id].notify()
        if self.on_wake is not None:
            self.on_wake(session_id)

    def take_wake(self, session_id: str) -> bool:
        signal = self._session_signals.get(session_id)
        return signal.take() if signal is not None else False

    async def wait_session(self, session_id: str, timeout_s: float) -> bool:
        return await self._session_signals[session_id].wait(timeout_s)

    def forget_session(self, session_id: str) -> None:
        """Drop the session's wake-up signal once its runner has exited (it is recreated on the next wake)."""
        self._session_signals.pop(session_id, None)

    # -- work queue wake-ups ---------------------------------------------------

    def notify_work(self, environment_id: str) -> None:
        for waiter in self._work_waiters.pop(environment_id, set()):
            waiter.set()

    async def wait_for_work(self, environment_id: str, timeout_s: float) -> None:
        waiter = anyio.Event()
        self._work_waiters[environment_id].add(waiter)
        try:
            with anyio.move_on_after(timeout_s):
                await waiter.wait()
        finally:
            waiters = self._work_waiters.get(environment_id)
            if waiters is not None:
                waiters.discard(waiter)
