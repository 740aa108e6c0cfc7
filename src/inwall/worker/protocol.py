"""The worker ↔ shim wire protocol, sans I/O: requests out as bytes, replies in as bytes.

JSON lines (see :mod:`inwall.worker._shim` for the shapes). This core only
frames, numbers and parses; :class:`inwall.worker.shim.ShimClient` moves the
bytes over the sandboxed process's pipes. A line that is not a reply object,
or one longer than ``max_line``, is the shim misbehaving: it raises
:class:`~inwall.errors.RemoteProtocolError` and the driver discards that shim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from inwall.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["DEFAULT_MAX_LINE", "Reply", "ShimProtocol"]

#: A reply carries at most a 5 MiB image as base64, or up to 8 MiB of bash output whose JSON-escaped
#: text the shim keeps under 9 MiB (``_shim.RESULT_JSON_CEILING``). The line is written with
#: ``ensure_ascii``, which can triple non-ASCII text (a 4-byte character becomes a 12-byte
#: surrogate pair): about 27 MiB at worst, well under this limit.
DEFAULT_MAX_LINE = 64 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """One parsed reply; exactly one of ``result``/``error``/``exception``/``cancelled`` is meaningful."""

    id: int
    ok: bool
    result: Any = None
    error: Any = None
    exception: str | None = None
    cancelled: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


class ShimProtocol:
    """Numbers requests and turns the shim's output bytes into :class:`Reply` objects."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._max_line = max_line
        self._next_id = 1
        self._buf = bytearray()
        self._scan_from = 0
        self.closed = False

    def request(self, op: str, args: dict[str, Any]) -> tuple[int, bytes]:
        """The id and the line to send for one request."""
        if self.closed:
            raise LocalProtocolError("the shim's output has ended; no more requests")
        rid = self._next_id
        self._next_id += 1
        line = json.dumps({"id": rid, "op": op, "args": args}, ensure_ascii=True, separators=(",", ":"))
        return rid, line.encode() + b"\n"

    @staticmethod
    def cancel(target: int) -> bytes:
        """The line that asks the shim to stop request ``target`` now (it then replies ``cancelled``)."""
        return json.dumps({"op": "cancel", "target": target}, separators=(",", ":")).encode() + b"\n"

    def receive_data(self, data: bytes) -> list[Reply]:
        """Feed output bytes; every reply they complete, in order."""
        if self.closed:
            raise LocalProtocolError("data after the end of the shim's output")
        self._buf += data
        out: list[Reply] = []
        while True:
            nl = self._buf.find(b"\n", self._scan_from)
            if nl < 0:
                self._scan_from = len(self._buf)
                if len(self._buf) > self._max_line:
                    raise RemoteProtocolError(f"shim reply longer than {self._max_line} bytes")
                return out
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._scan_from = 0
            if line.strip():
                out.append(_parse(line))

    def receive_eof(self) -> None:
        """The shim's stdout ended (it exited or was killed)."""
        self.closed = True


def _parse(line: bytes) -> Reply:
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise RemoteProtocolError(f"shim sent a line that is not JSON: {line[:200]!r}") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("id"), int) or not isinstance(msg.get("ok"), bool):
        raise RemoteProtocolError(f"shim sent a line that is not a reply: {line[:200]!r}")
    meta = msg.get("meta")
    exc_repr = msg.get("exception")
    return Reply(
        id=msg["id"],
        ok=msg["ok"],
        result=msg.get("result"),
        error=msg.get("error"),
        exception=exc_repr if isinstance(exc_repr, str) else None,
        cancelled=msg.get("cancelled") is True,
        meta=meta if isinstance(meta, dict) else {},
    )
