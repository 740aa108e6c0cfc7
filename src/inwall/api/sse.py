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
from anyio.streams.memory import MemoryObjectReceiveStream

from inwall.control.bus import Published

__all__ = ["encode_event", "event_stream"]

HEARTBEAT = b": ping\n\n"
_CHUNK_BYTES = 256 * 1024  # coalesce queued events up to this much per write
FINAL_TYPES = frozenset({"session.status_terminated", "session.deleted"})


def encode_event(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


async def event_stream(
    events: MemoryObjectReceiveStream[Published],
    *,
    heartbeat_s: float,
    preface: Sequence[dict[str, Any]] = (),
) -> AsyncIterator[bytes]:
    """Yield encoded events until the session ends or the subscription is cut (a slow reader).

    Events committed together (a model step's span start, tool call and span end)
    arrive together, so they leave in one chunk: one socket write and one wake-up
    of the reader instead of one per event, on the tool-call round trip's hot path.
    """
    yield HEARTBEAT  # flush headers at once so clients know the stream is open
    for body in preface:
        yield encode_event(body)
        if body.get("type") in FINAL_TYPES:
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
        chunk = [ev.wire(encode_event)]
        size = len(chunk[0])
        final = ev.type in FINAL_TYPES
        while not final and size < _CHUNK_BYTES:
            try:
                ev = events.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break  # a closed stream ends at the next receive(), after this chunk is out
            chunk.append(ev.wire(encode_event))
            size += len(chunk[-1])
            final = ev.type in FINAL_TYPES
        yield b"".join(chunk)
        if final:
            return
