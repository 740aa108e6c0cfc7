"""Server-sent events exactly as the SDK's decoder wants them.

Each event is ``event: <type>`` + ``data: <json>`` + a blank line (a data-only
message would be dropped by the SDK). Heartbeats are SSE comments, which every
client ignores, sent well inside the SDK's 600 s read timeout.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream

__all__ = ["encode_event", "event_stream"]

HEARTBEAT = b": ping\n\n"
FINAL_TYPES = frozenset({"session.status_terminated", "session.deleted"})


def encode_event(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


async def event_stream(
    events: ObjectReceiveStream[dict[str, Any]], *, heartbeat_s: float, preface: Sequence[dict[str, Any]] = ()
) -> AsyncIterator[bytes]:
    """Yield encoded events until the session ends or the subscription is cut (a slow reader)."""
    yield HEARTBEAT  # flush headers at once so clients know the stream is open
    for ev in preface:
        yield encode_event(ev)
        if ev.get("type") in FINAL_TYPES:
            return
    while True:
        with anyio.move_on_after(heartbeat_s) as scope:
            try:
                ev = await events.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return
        if scope.cancelled_caught:
            yield HEARTBEAT
            continue
        yield encode_event(ev)
        if ev.get("type") in FINAL_TYPES:
            return
