"""The hash chain, sans-I/O: seal records and verify a sequence of lines.

Each record carries ``seq`` (0, 1, 2, ...), ``prev`` (the previous record's
``hash``; ``GENESIS`` for the first) and ``hash`` = SHA-256 (or HMAC-SHA-256
when a key is configured) over the canonical JSON of the record without its
``hash``. Because every record commits to its position and its predecessor, an
edit, an insertion, a deletion or a reordering anywhere breaks the chain at
that point; a deleted tail is caught by the head anchor (see ``log.py``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GENESIS", "Problem", "Report", "canonical_json", "digest", "seal", "verify_lines"]

GENESIS = "0" * 64


def canonical_json(value: Any) -> bytes:
    """One byte string per value, so a hash means the same thing on every host."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest(body: Mapping[str, Any], key: bytes | None) -> str:
    data = canonical_json(body)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def seal(record: Mapping[str, Any], *, seq: int, prev: str, key: bytes | None = None) -> dict[str, Any]:
    """Return ``record`` with its chain fields added (``seq``, ``prev``, ``hash``)."""
    if "hash" in record or "seq" in record or "prev" in record:
        raise ValueError("a record may not set its own chain fields (seq, prev, hash)")
    body = {**record, "seq": seq, "prev": prev}
    return {**body, "hash": digest(body, key)}


@dataclass(frozen=True)
class Problem:
    line: int
    kind: str  # "malformed" | "hash_mismatch" | "broken_link" | "bad_sequence" | "truncated"
    detail: str


@dataclass
class Report:
    records: int = 0
    last_seq: int = -1
    last_hash: str = GENESIS
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_lines(lines: Iterable[str], key: bytes | None = None) -> Report:
    """Check every line; keep going after a problem so the report names them all."""
    report = Report()
    expected_prev = GENESIS
    expected_seq = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        if not line:
            report.problems.append(Problem(number, "malformed", "empty line"))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            report.problems.append(Problem(number, "malformed", f"not JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("hash"), str):
            report.problems.append(Problem(number, "malformed", "not a sealed record"))
            continue
        body = {k: v for k, v in record.items() if k != "hash"}
        if digest(body, key) != record["hash"]:
            report.problems.append(Problem(number, "hash_mismatch", "record was edited after sealing"))
        seq = record.get("seq")
        if seq != expected_seq:
            report.problems.append(
                Problem(number, "bad_sequence", f"seq {seq!r} where {expected_seq} was expected")
            )
        if record.get("prev") != expected_prev:
            report.problems.append(
                Problem(number, "broken_link", "prev does not match the previous record's hash")
            )
        report.records += 1
        expected_prev = record["hash"]
        expected_seq = seq + 1 if isinstance(seq, int) else expected_seq + 1
        report.last_seq = expected_seq - 1
        report.last_hash = expected_prev
    return report
