"""Typed, machine-readable records of what the sandbox stopped.

Tool results show them to the model inside a ``<sandbox_violations>`` block
(so it can change course instead of retrying blindly), the audit log stores
``to_dict()``, and tests assert on the types rather than on stderr text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

__all__ = [
    "EgressDenied",
    "FilesystemDenied",
    "LimitExceeded",
    "SyscallDenied",
    "Violation",
    "audit_fields",
    "from_stderr",
    "render_violations",
]

#: distinct lines a ``<sandbox_violations>`` block shows; the rest are counted in its last line
MAX_RENDERED = 50


@dataclass(frozen=True)
class Violation:
    """Base: every violation has a ``kind`` and renders as one line."""

    kind: ClassVar[str] = "violation"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}

    def line(self) -> str:  # pragma: no cover - every subclass overrides
        return self.kind


@dataclass(frozen=True)
class LimitExceeded(Violation):
    """A resource limit from ``inwall.limits`` was hit (``limit`` is the settings key)."""

    kind: ClassVar[str] = "limit_exceeded"
    limit: str
    value: float | int | None = None
    detail: str = ""

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        return f"limit {self.limit}={self.value} exceeded{tail}"


@dataclass(frozen=True)
class EgressDenied(Violation):
    """The egress proxy refused a connection."""

    kind: ClassVar[str] = "egress_denied"
    host: str
    port: int
    reason: str

    def line(self) -> str:
        return f"deny network-outbound {self.host}:{self.port} ({self.reason})"


@dataclass(frozen=True)
class FilesystemDenied(Violation):
    """A filesystem operation failed on a path the policy protects (``op``: read or write)."""

    kind: ClassVar[str] = "filesystem_denied"
    path: str
    op: str
    detail: str = ""

    def line(self) -> str:
        tail = f" ({self.detail})" if self.detail else ""
        return f"deny file-{self.op} {self.path}{tail}"


@dataclass(frozen=True)
class SyscallDenied(Violation):
    """The command was killed by the seccomp filter (SIGSYS)."""

    kind: ClassVar[str] = "syscall_denied"
    detail: str = ""

    def line(self) -> str:
        return f"deny syscall ({self.detail})" if self.detail else "deny syscall"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_violations(violations: Sequence[Violation], *, omitted: int = 0) -> str:
    """The block appended to a tool result; empty string when nothing was blocked.

    Repeated lines are shown once, in first-seen order, and at most
    :data:`MAX_RENDERED` of them: a command that trips the proxy 20,000 times
    must neither bury the model's context in a megabyte of denials nor stall
    the event loop rendering them. ``omitted`` counts violations the caller
    dropped before rendering (they may repeat shown ones); the last line
    ("… and N more") adds them to the distinct lines not shown.
    """
    if not violations and not omitted:
        return ""
    lines: dict[str, None] = {}  # a dict keeps insertion order and answers "seen?" in O(1)
    for v in violations:
        lines.setdefault(_escape(v.line()))
    shown = list(lines)[:MAX_RENDERED]
    more = len(lines) - len(shown) + omitted
    if more:
        shown.append(f"… and {more} more")
    return "<sandbox_violations>\n" + "\n".join(shown) + "\n</sandbox_violations>"


def audit_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A violation's ``to_dict()`` as audit record fields: its ``kind`` travels as ``violation``.

    ``kind`` is the audit record's own field (``AuditLog.append``'s first
    parameter); passed through, the violation's kind would collide with it.
    """
    out = dict(fields)
    if "kind" in out:
        out["violation"] = out.pop("kind")
    return out


# "prog: PATH: Read-only file system" and the like, as coreutils, bash and
# Python (``[Errno 30] Read-only file system: 'PATH'``) print them.
_FS_ERR = re.compile(
    r"(?:(?P<p1>[^\s:'\"]+): (?P<m1>Read-only file system|Permission denied|Operation not permitted))"
    r"|(?:\[Errno (?:1|13|30)\] (?P<m2>[^:]+): '(?P<p2>[^']+)')"
)
_WRITE_HINTS = ("Read-only file system",)
# Every match holds one of these: a substring test (C speed) spares the regex, which
# backtracks through every word of a large, denial-free output.
_FS_ERR_MARKERS = ("Read-only file system", "Permission denied", "Operation not permitted", "[Errno ")


def from_stderr(
    stderr: bytes,
    *,
    ignore: Mapping[str, Sequence[str]] | None = None,
    command: str = "",
    max_events: int = 20,
) -> list[Violation]:
    """Best-effort filesystem denials from a command's stderr (Linux reports nothing else).

    ``ignore`` is srt's ``ignoreViolations``: command pattern (``*`` = any)
    to path prefixes whose denials are not reported.
    """
    text = stderr[-65536:].decode("utf-8", "replace")
    if not any(marker in text for marker in _FS_ERR_MARKERS):
        return []
    prefixes: list[str] = []
    for pattern, paths in (ignore or {}).items():
        if pattern == "*" or (pattern and pattern in command):
            prefixes.extend(paths)
    out: list[Violation] = []
    for m in _FS_ERR.finditer(text):
        path = m.group("p1") or m.group("p2") or ""
        msg = m.group("m1") or m.group("m2") or ""
        if not path or any(path.startswith(p) for p in prefixes):
            continue
        op = "write" if any(h in msg for h in _WRITE_HINTS) else "access"
        v = FilesystemDenied(path=path, op=op, detail=msg.strip())
        if v not in out:
            out.append(v)
        if len(out) >= max_events:
            break
    return out
