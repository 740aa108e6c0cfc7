"""The control plane's own audit trail: hash-chained rows in the database.

Records use the same chain as the worker's and gateway's JSONL logs
(``inwall.audit.chain``), so an export (``GET /v1/inwall/audit?format=jsonl``)
verifies with ``inwall audit verify`` like any other log. Appends are
serialised by the database write lock (SQLite) or a row lock on the chain
head (PostgreSQL), so the chain never forks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.audit.chain import GENESIS, seal
from inwall.audit.log import scrub
from inwall.control.pages import decode_cursor, encode_cursor, resolve_limit
from inwall.control.timefmt import ts
from inwall.errors import InvalidInput
from inwall.ids import now, parse_rfc3339
from inwall.store import prepared
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["ControlAudit"]

log = logging.getLogger("inwall.audit")


class ControlAudit:
    def __init__(self, db: Database, *, key: bytes | None = None) -> None:
        self._db = db
        self._key = key

    async def record(
        self,
        kind: str,
        *,
        outcome: str,
        session_id: str | None = None,
        user_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        async with self._db.write() as conn:
            return await self.append(
                conn, kind, outcome=outcome, session_id=session_id, user_id=user_id, **fields
            )

    async def append(
        self,
        conn: AsyncConnection,
        kind: str,
        *,
        outcome: str,
        session_id: str | None = None,
        user_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Seal one record in the caller's transaction: it commits, or vanishes, with what it describes."""
        at = now()
        body = {
            "ts": ts(at),
            "kind": kind,
            "outcome": outcome,
            "session_id": session_id,
            "user_id": user_id,
            **scrub(fields),
        }
        head = prepared.AUDIT_HEAD if self._db.is_sqlite else prepared.AUDIT_HEAD_LOCKED
        last = (await conn.execute(head)).first()
        seq, prev = (0, GENESIS) if last is None else (last.seq + 1, last.hash)
        sealed = seal(body, seq=seq, prev=prev, key=self._key)
        await conn.execute(
            prepared.AUDIT_INSERT,
            {
                "seq": seq,
                "ts": at,
                "kind": kind,
                "session_id": session_id,
                "user_id": user_id,
                "outcome": outcome,
                "record": sealed,
                "hash": sealed["hash"],
                "exported": False,
            },
        )
        return sealed

    async def safe_record(self, kind: str, **kw: Any) -> None:
        """For paths that must not fail because auditing did (e.g. logging a 401): log and move on."""
        try:
            await self.record(kind, **kw)
        except Exception:
            log.exception("could not write an audit record kind=%s", kind)

    async def list(
        self, *, limit: int | None, page_cursor: str | None, filters: Mapping[str, Any]
    ) -> dict[str, Any]:
        n = resolve_limit(limit, default=100)
        after = decode_cursor(page_cursor)
        q = (
            sa.select(s.audit_records.c.seq, s.audit_records.c.record)
            .order_by(s.audit_records.c.seq)
            .limit(n + 1)
        )
        if after is not None:
            q = q.where(s.audit_records.c.seq > int(after))
        for column in ("kind", "session_id", "user_id", "outcome"):
            if filters.get(column):
                q = q.where(getattr(s.audit_records.c, column) == filters[column])
        for op, value in (filters.get("ts") or {}).items():
            stamp = _parse(value)
            cond = {
                "gt": s.audit_records.c.ts > stamp,
                "gte": s.audit_records.c.ts >= stamp,
                "lt": s.audit_records.c.ts < stamp,
                "lte": s.audit_records.c.ts <= stamp,
            }[op]
            q = q.where(cond)
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).all()
        more = len(rows) > n
        rows = rows[:n]
        return {
            "data": [r.record for r in rows],
            "next_page": encode_cursor(rows[-1].seq) if more and rows else None,
        }

    async def export_jsonl(self) -> AsyncIterator[bytes]:
        """The whole chain as JSONL, in order, in pages (bounded memory)."""
        after = -1
        while True:
            async with self._db.read() as conn:
                rows = (
                    await conn.execute(
                        sa.select(s.audit_records.c.seq, s.audit_records.c.record)
                        .where(s.audit_records.c.seq > after)
                        .order_by(s.audit_records.c.seq)
                        .limit(1000)
                    )
                ).all()
            if not rows:
                return
            for r in rows:
                yield (
                    json.dumps(r.record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
                ).encode()
            after = rows[-1].seq


def _parse(value: str) -> datetime:
    try:
        return parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidInput(f"not an RFC 3339 timestamp: {value!r}") from exc
