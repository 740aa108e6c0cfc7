"""The audit log on disk: one JSON line per record, fsynced, with a head anchor.

The chain alone cannot show that records were cut off the end, so every append
also rewrites ``FILE.head`` with the last ``seq`` and ``hash``. ``verify_file``
flags a log whose head names a record that is no longer there. An attacker with
root on the host can rewrite both; ship the head hash off the host (the worker
and gateway report it) when that matters, or configure a key so hashes cannot
be recomputed without it.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from inwall.audit.chain import GENESIS, Problem, Report, seal, verify_lines
from inwall.errors import IntegrityError

__all__ = ["AuditLog", "scrub", "verify_file"]

_SECRET_KEY = re.compile(r"(?i)(api[_-]?key|token|secret|password|authorization|credential|cookie)")
_REDACTED = "[redacted]"


def scrub(value: Any) -> Any:
    """Replace any value stored under a secret-looking key; defence in depth for callers."""
    if isinstance(value, Mapping):
        return {
            k: (
                _REDACTED
                if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
                else scrub(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """Thread-safe appender. Open once per process and share it."""

    def __init__(self, path: str | os.PathLike[str], *, key: bytes | None = None, fsync: bool = True) -> None:
        self.path = Path(path)
        self._key = key
        self._fsync = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._prev = self._resume()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _resume(self) -> tuple[int, str]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS
        last = _last_line(self.path)
        try:
            record = json.loads(last)
            return int(record["seq"]) + 1, str(record["hash"])
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(
                f"{self.path}: the last line is not a sealed record; run `inwall audit verify {self.path}`"
            ) from exc

    @property
    def head(self) -> tuple[int, str]:
        """The last sealed (seq, hash), for anchoring off the host."""
        with self._lock:
            return self._seq - 1, self._prev

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"ts": datetime.now(UTC).isoformat(timespec="microseconds"), "kind": kind, **scrub(fields)}
        with self._lock:
            sealed = seal(record, seq=self._seq, prev=self._prev, key=self._key)
            line = json.dumps(sealed, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
            os.write(self._fd, line.encode())
            if self._fsync:
                os.fdatasync(self._fd)
            self._seq += 1
            self._prev = sealed["hash"]
            _write_head(self.path, sealed["seq"], sealed["hash"])
        return sealed

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_head(path: Path, seq: int, hash_: str) -> None:
    tmp = path.with_name(path.name + ".head.tmp")
    tmp.write_text(json.dumps({"seq": seq, "hash": hash_}) + "\n")
    os.replace(tmp, _head_path(path))


def _last_line(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        block = b""
        pos = end
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            block = f.read(step) + block
            stripped = block.rstrip(b"\n")
            if b"\n" in stripped:
                return stripped.rsplit(b"\n", 1)[1].decode()
        return block.rstrip(b"\n").decode()


def verify_file(path: str | os.PathLike[str], *, key: bytes | None = None) -> Report:
    """Verify the chain and the head anchor of one log file."""
    p = Path(path)
    with p.open(encoding="utf-8", errors="replace") as f:
        report = verify_lines(f, key)
    head = _head_path(p)
    if head.exists():
        try:
            anchor = json.loads(head.read_text())
            seq, hash_ = int(anchor["seq"]), str(anchor["hash"])
        except (ValueError, KeyError, TypeError):
            report.problems.append(Problem(0, "malformed", f"{head.name} is unreadable"))
        else:
            if seq > report.last_seq:
                report.problems.append(
                    Problem(
                        report.records,
                        "truncated",
                        f"head names seq {seq} but the log ends at {report.last_seq}",
                    )
                )
            elif seq == report.last_seq and hash_ != report.last_hash:
                report.problems.append(
                    Problem(report.records, "hash_mismatch", "the last record differs from the head")
                )
    return report
