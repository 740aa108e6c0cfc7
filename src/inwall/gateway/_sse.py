"""Server-sent events, sans-I/O: an incremental parser that keeps each event's raw bytes.

The perimeter rewrites only the events it must (a ``tools/list`` result) and
passes every other event through byte for byte, so the parser hands back the
exact bytes of each event alongside its decoded fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SseEvent", "SseParser", "SseTooLarge", "encode_event"]

_EOL = re.compile(rb"[\r\n]")


class SseTooLarge(ValueError):
    """One event grew past the parser's limit."""


@dataclass(frozen=True)
class SseEvent:
    raw: bytes
    data: str | None
    event: str | None
    id: str | None


class SseParser:
    """Feed bytes, get complete events; line endings may be CRLF, LF or CR (WHATWG)."""

    def __init__(self, *, max_event_bytes: int = 64 * 1024 * 1024) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        self._scan = 0  # where the next unread line starts, relative to _buf
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._first = True

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buf += chunk
        if self._first and len(self._buf) >= 3:
            if self._buf.startswith(b"\xef\xbb\xbf"):
                del self._buf[:3]
            self._first = False
        events: list[SseEvent] = []
        start = 0
        while True:
            match = _EOL.search(self._buf, self._scan)
            if match is None:
                break
            idx = match.start()
            if self._buf[idx] == 0x0D:
                if idx + 1 == len(self._buf):
                    break  # a CR at the end of the chunk may be the first half of CRLF
                end = idx + 2 if self._buf[idx + 1] == 0x0A else idx + 1
            else:
                end = idx + 1
            line = bytes(self._buf[self._scan : idx])
            self._scan = end
            if line:
                self._field(line)
                continue
            events.append(
                SseEvent(
                    raw=bytes(self._buf[start:end]),
                    data="\n".join(self._data) if self._data else None,
                    event=self._event,
                    id=self._id,
                )
            )
            start = end
            self._data, self._event, self._id = [], None, None
        if start:
            del self._buf[:start]
            self._scan -= start
        if len(self._buf) > self._max:
            raise SseTooLarge(f"a server-sent event exceeded {self._max} bytes")
        return events

    def pending(self) -> bytes:
        """Bytes of an unfinished event (a stream that ended mid-event)."""
        return bytes(self._buf)

    def _field(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace")
        if text.startswith(":"):
            return
        name, sep, value = text.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value


def encode_event(data: str, *, event: str | None = "message", id: str | None = None) -> bytes:
    """One SSE event; ``data`` must not contain line breaks (compact JSON never does)."""
    lines = []
    if event is not None:
        lines.append(f"event: {event}")
    if id is not None:
        lines.append(f"id: {id}")
    lines.extend(f"data: {part}" for part in data.split("\n"))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
