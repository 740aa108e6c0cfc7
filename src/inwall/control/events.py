"""The session event log: append-only rows, the source of truth for every session.

Everything a session is — its transcript, its turn state, what a worker still
owes it — is derived from this log, so a server restart rebuilds it exactly.
Writes go through ``Tx``: events become visible to live streams only after
their transaction commits, so a stream never shows an event the list cannot.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.control.bus import EventBus
from inwall.control.pages import decode_cursor, encode_cursor, resolve_limit
from inwall.control.timefmt import ts, utc
from inwall.errors import InvalidInput
from inwall.ids import new_id, now, parse_rfc3339
from inwall.store import prepared
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["USER_EVENT_TYPES", "EventLog", "LoggedEvent", "Tx", "ref_of"]

# Events a client sends; they are echoed into the log with processed_at null
# until the turn loop consumes them.
USER_EVENT_TYPES = frozenset(
    {
        "user.message",
        "user.interrupt",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.tool_result",
        "system.message",
    }
)


_REFS = {
    "user.tool_result": ("tool_use_id", "result"),
    "user.custom_tool_result": ("custom_tool_use_id", "result"),
    "agent.tool_result": ("tool_use_id", "result"),
    "agent.mcp_tool_result": ("mcp_tool_use_id", "result"),
    "user.tool_confirmation": ("tool_use_id", "confirmation"),
}


def ref_of(event: dict[str, Any]) -> tuple[str | None, str | None]:
    """The tool-use event a result or confirmation answers, and which kind of answer it is."""
    spec = _REFS.get(str(event.get("type")))
    if spec is None:
        return None, None
    value = event.get(spec[0])
    return (value, spec[1]) if isinstance(value, str) else (None, None)


@dataclass
class LoggedEvent:
    seq: int
    id: str
    type: str
    body: dict[str, Any]
    internal: dict[str, Any]
    processed_at: datetime | None


@dataclass
class Tx:
    """A write transaction that also collects what to publish once it commits."""

    conn: AsyncConnection
    #: PostgreSQL numbers rows at insert, not at commit: without a per-session lock, a
    #: transaction could commit seq 100 after another committed 101, and a reader that
    #: already read past 101 would never see 100. SQLite's single writer orders them.
    lock_sessions: bool = False
    locked: set[str] = field(default_factory=set)
    published: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    work_notified: set[str] = field(default_factory=set)
    closed_sessions: set[str] = field(default_factory=set)
    woken: set[str] = field(default_factory=set)

    async def append(
        self,
        session_id: str,
        events: Sequence[dict[str, Any]],
        *,
        internal: Sequence[dict[str, Any]] | None = None,
        queued: bool = False,
        at: datetime | None = None,
        stamps: Sequence[datetime | None] | None = None,
    ) -> list[dict[str, Any]]:
        """Stamp ``processed_at`` (unless ``queued``), insert in one statement, stage for publishing.

        An event keeps a preassigned ``id`` (so one batch can reference itself); ``at``
        backdates the whole batch and ``stamps`` single events (a span's start).
        """
        at = at or now()
        out = []
        rows = []
        for i, ev in enumerate(events):
            event_id = str(ev.get("id") or new_id("sevt"))
            stamp = (stamps[i] if stamps is not None else None) or at
            processed = None if queued else stamp
            body = {
                "id": event_id,
                **{k: v for k, v in ev.items() if k != "id"},
                "processed_at": ts(processed),
            }
            ref_id, ref_kind = ref_of(body)
            rows.append(
                {
                    "id": event_id,
                    "session_id": session_id,
                    "type": body["type"],
                    "body": body,
                    "processed_at": processed,
                    "created_at": at,
                    "internal": dict(internal[i]) if internal else {},
                    "ref_id": ref_id,
                    "ref_kind": ref_kind,
                }
            )
            out.append(body)
        if rows:
            if self.lock_sessions and session_id not in self.locked:
                await self.conn.execute(prepared.LOCK_SESSION, {"session_id": session_id})
                self.locked.add(session_id)
            await self.conn.execute(prepared.EVENT_INSERT, rows)  # one statement (executemany), in order
        self.published.setdefault(session_id, []).extend(out)
        self.woken.add(session_id)
        return out

    async def mark_processed(
        self, session_id: str, event_ids: Sequence[str], *, consumed_step: int | None = None
    ) -> None:
        """Stamp consumed user events; the list shows them as handled from now on.

        ``consumed_step`` records which model step took an input into its
        transcript (-1: dropped by an interrupt), so the transcript rebuilds
        identically after a restart.
        """
        if not event_ids:
            return
        at = now()
        rows = (
            await self.conn.execute(
                sa.select(s.events.c.id, s.events.c.body, s.events.c.internal).where(
                    s.events.c.session_id == session_id, s.events.c.id.in_(list(event_ids))
                )
            )
        ).all()
        for row in rows:
            body = dict(row.body)
            body["processed_at"] = ts(at)
            internal = dict(row.internal or {})
            if consumed_step is not None:
                internal["consumed_step"] = consumed_step
            await self.conn.execute(
                s.events.update()
                .where(s.events.c.id == row.id)
                .values(processed_at=at, body=body, internal=internal)
            )

    def notify_work(self, environment_id: str) -> None:
        self.work_notified.add(environment_id)

    def close_streams(self, session_id: str) -> None:
        self.closed_sessions.add(session_id)

    def wake(self, session_id: str) -> None:
        self.woken.add(session_id)


class EventLog:
    def __init__(self, db: Database, bus: EventBus) -> None:
        self._db = db
        self.bus = bus

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        async with self._db.write() as conn:
            tx = Tx(conn, lock_sessions=not self._db.is_sqlite)
            yield tx
        # Committed: now, and only now, let the world see it.
        for session_id, events in tx.published.items():
            self.bus.publish(session_id, events)
        for session_id in tx.woken - tx.published.keys():
            self.bus.wake_session(session_id)
        for environment_id in tx.work_notified:
            self.bus.notify_work(environment_id)
        for session_id in tx.closed_sessions:
            self.bus.close_session(session_id)

    async def emit(
        self, session_id: str, events: Sequence[dict[str, Any]], **kw: Any
    ) -> list[dict[str, Any]]:
        async with self.transaction() as tx:
            return await tx.append(session_id, events, **kw)

    async def since(
        self, session_id: str, after_seq: int, conn: AsyncConnection | None = None
    ) -> list[LoggedEvent]:
        if conn is None:
            async with self._db.read() as c:
                return await self.since(session_id, after_seq, c)
        params = {"session_id": session_id, "after": after_seq}
        return [
            LoggedEvent(
                seq=r["seq"],
                id=r["id"],
                type=r["type"],
                body=r["body"],
                internal=r["internal"] or {},
                processed_at=utc(r["processed_at"]),
            )
            for r in (await conn.execute(prepared.EVENTS_SINCE, params)).mappings()
        ]

    async def list(
        self,
        session_id: str,
        *,
        limit: int | None,
        page_cursor: str | None,
        order: str | None,
        types: Sequence[str] | None,
        created: dict[str, str],
    ) -> dict[str, Any]:
        n = resolve_limit(limit, default=100, maximum=1000)
        descending = order == "desc"
        if order not in (None, "asc", "desc"):
            raise InvalidInput("order must be 'asc' or 'desc'")
        after = decode_cursor(page_cursor)
        q = sa.select(s.events.c.seq, s.events.c.body).where(s.events.c.session_id == session_id)
        q = q.order_by(s.events.c.seq.desc() if descending else s.events.c.seq).limit(n + 1)
        if after is not None:
            if not isinstance(after, int):
                raise InvalidInput("invalid page cursor")
            q = q.where(s.events.c.seq < after if descending else s.events.c.seq > after)
        if types:
            q = q.where(s.events.c.type.in_(list(types)))
        stamp = sa.func.coalesce(s.events.c.processed_at, s.events.c.created_at)
        ops = {"gt": stamp.__gt__, "gte": stamp.__ge__, "lt": stamp.__lt__, "lte": stamp.__le__}
        for op, value in created.items():
            try:
                q = q.where(ops[op](parse_rfc3339(value)))
            except ValueError as exc:
                raise InvalidInput(f"created_at[{op}] is not an RFC 3339 timestamp") from exc
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).all()
        more = len(rows) > n
        rows = rows[:n]
        return {
            "data": [r.body for r in rows],
            "next_page": encode_cursor(rows[-1].seq) if more and rows else None,
        }
