"""The per-environment work queue self-hosted workers drain, with leases that survive worker death.

A session needs a worker while it can owe tool results; ``ensure_work`` queues
an item when none is live. Workers poll (long-poll up to ``block_ms``), ack,
heartbeat with optimistic concurrency, and stop the item when done. The reaper
returns items whose lease lapsed to the queue; their session shows
``rescheduling`` until another worker acknowledges the item.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from inwall.control.auth import SessionTokens
from inwall.control.events import EventLog, Tx
from inwall.control.lease import State, Trigger, heartbeat_matches, transition
from inwall.control.pages import decode_cursor, page, patch_metadata, resolve_limit
from inwall.control.status import change_status
from inwall.control.timefmt import ts, utc
from inwall.errors import InvalidInput, NotFound, PreconditionFailed
from inwall.ids import new_id, now, rfc3339
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["WorkQueue"]

log = logging.getLogger(__name__)

LIVE = (State.QUEUED.value, State.STARTING.value, State.ACTIVE.value)
DEFAULT_RECLAIM_MS = 5000
WORKERS_POLLING_WINDOW_S = 30


def render(row: Any, *, secret: str | None = None) -> dict[str, Any]:
    return {
        "type": "work",
        "id": row["id"],
        "environment_id": row["environment_id"],
        "state": row["state"],
        "data": {"type": "session", "id": row["session_id"]},
        "metadata": row["metadata"] or {},
        "secret": secret,
        "created_at": ts(row["created_at"]),
        "acknowledged_at": ts(row["acknowledged_at"]),
        "started_at": ts(row["started_at"]),
        "latest_heartbeat_at": ts(row["latest_heartbeat_at"]),
        "stop_requested_at": ts(row["stop_requested_at"]),
        "stopped_at": ts(row["stopped_at"]),
    }


class WorkQueue:
    def __init__(
        self,
        db: Database,
        log_: EventLog,
        tokens: SessionTokens,
        *,
        lease_ttl_s: int = 30,
        reap_interval_s: float = 0.5,
    ) -> None:
        self._db = db
        self._log = log_
        self._tokens = tokens
        self.lease_ttl_s = lease_ttl_s
        self.reap_interval_s = reap_interval_s

    # -- queueing --------------------------------------------------------------

    async def ensure_work(self, tx: Tx, session_id: str, environment_id: str) -> str | None:
        """Queue an item for the session unless one is already live or the session ended; the new id.

        The session is checked here, in the writing transaction: a runner decides to
        queue work before it gets the write lock, and a delete or archive may commit
        while it waits for it.
        """
        session = (
            await tx.conn.execute(
                sa.select(s.sessions.c.status, s.sessions.c.deleted_at).where(s.sessions.c.id == session_id)
            )
        ).first()
        if session is None or session.deleted_at is not None or session.status == "terminated":
            return None
        live = await tx.conn.execute(
            sa.select(s.work_items.c.id).where(
                s.work_items.c.session_id == session_id, s.work_items.c.state.in_(LIVE)
            )
        )
        if live.first() is not None:
            return None
        work_id = new_id("work")
        at = now()
        await tx.conn.execute(
            s.work_items.insert().values(
                id=work_id,
                environment_id=environment_id,
                session_id=session_id,
                state=State.QUEUED.value,
                metadata={},
                created_at=at,
                queued_at=at,
                attempt=0,
            )
        )
        tx.notify_work(environment_id)
        return work_id

    async def stop_for_session(self, tx: Tx, session_id: str) -> None:
        """The session ended: ask its worker to stop (queued items stop at once)."""
        rows = (
            await tx.conn.execute(
                sa.select(s.work_items).where(
                    s.work_items.c.session_id == session_id, s.work_items.c.state != State.STOPPED.value
                )
            )
        ).mappings()
        for row in list(rows):
            await self._apply(tx.conn, row, Trigger.STOP)

    # -- the worker protocol -----------------------------------------------------

    async def poll(
        self,
        environment_id: str,
        *,
        worker_id: str | None,
        block_ms: int | None,
        reclaim_older_than_ms: int | None,
    ) -> dict[str, Any] | None:
        if block_ms is not None and not 1 <= block_ms <= 999:
            raise InvalidInput("block_ms must be between 1 and 999")
        if reclaim_older_than_ms is not None and reclaim_older_than_ms < 0:
            raise InvalidInput("reclaim_older_than_ms must not be negative")
        reclaim = timedelta(
            milliseconds=DEFAULT_RECLAIM_MS if reclaim_older_than_ms is None else reclaim_older_than_ms
        )
        deadline = anyio.current_time() + (block_ms or 0) / 1000
        if worker_id:
            await self._note_poller(environment_id, worker_id)
        while True:
            item = await self._claim(environment_id, worker_id, reclaim)
            if item is not None:
                return item
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return None
            await self._log.bus.wait_for_work(environment_id, remaining)

    async def _claim(
        self, environment_id: str, worker_id: str | None, reclaim: timedelta
    ) -> dict[str, Any] | None:
        at = now()
        async with self._db.write() as conn:
            q = (
                sa.select(s.work_items)
                .where(
                    s.work_items.c.environment_id == environment_id,
                    s.work_items.c.state == State.QUEUED.value,
                    sa.or_(s.work_items.c.polled_at.is_(None), s.work_items.c.polled_at <= at - reclaim),
                )
                .order_by(s.work_items.c.queued_at, s.work_items.c.id)
                .limit(1)
            )
            if not self._db.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            row = (await conn.execute(q)).mappings().first()
            if row is None:
                return None
            await conn.execute(
                s.work_items.update()
                .where(s.work_items.c.id == row["id"])
                .values(polled_at=at, worker_id=worker_id)
            )
            row = (
                (await conn.execute(sa.select(s.work_items).where(s.work_items.c.id == row["id"])))
                .mappings()
                .one()
            )
        token = self._tokens.mint(
            session_id=row["session_id"], environment_id=environment_id, work_id=row["id"]
        )
        return render(row, secret=SessionTokens.secret_payload(token))

    async def _note_poller(self, environment_id: str, worker_id: str) -> None:
        async with self._db.write() as conn:
            values = {"environment_id": environment_id, "worker_id": worker_id[:255], "polled_at": now()}
            updated = await conn.execute(
                s.worker_polls.update()
                .where(
                    s.worker_polls.c.environment_id == environment_id,
                    s.worker_polls.c.worker_id == values["worker_id"],
                )
                .values(polled_at=values["polled_at"])
            )
            if updated.rowcount == 0:
                await conn.execute(s.worker_polls.insert().values(**values))

    async def _get(self, conn: AsyncConnection, environment_id: str, work_id: str) -> Any:
        row = (
            (
                await conn.execute(
                    sa.select(s.work_items).where(
                        s.work_items.c.id == work_id, s.work_items.c.environment_id == environment_id
                    )
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"work item {work_id} not found in environment {environment_id}")
        return row

    async def ack(self, environment_id: str, work_id: str) -> dict[str, Any]:
        async with self._log.transaction() as tx:
            row = await self._get(tx.conn, environment_id, work_id)
            await self._apply(tx.conn, row, Trigger.ACK)
            session_id = row["session_id"]
            srow = (
                await tx.conn.execute(sa.select(s.sessions.c.status).where(s.sessions.c.id == session_id))
            ).first()
            if srow is not None and srow.status == "rescheduling":
                await change_status(tx, session_id, "running")
            tx.wake(session_id)
            return render(await self._get(tx.conn, environment_id, work_id))

    async def heartbeat(
        self,
        environment_id: str,
        work_id: str,
        *,
        expected_last_heartbeat: str | None,
        desired_ttl_seconds: int | None,
    ) -> dict[str, Any]:
        ttl = self.lease_ttl_s
        if desired_ttl_seconds is not None:
            if desired_ttl_seconds < 1:
                raise InvalidInput("desired_ttl_seconds must be positive")
            ttl = min(desired_ttl_seconds, 10 * self.lease_ttl_s)
        async with self._db.write() as conn:
            row = await self._get(conn, environment_id, work_id)
            state = State(row["state"])
            if not heartbeat_matches(state, row["last_heartbeat"], expected_last_heartbeat):
                raise PreconditionFailed(
                    f"Heartbeat precondition failed: expected {expected_last_heartbeat}, "
                    f"actual was {row['last_heartbeat'] or 'NULL'}",
                    error_code="heartbeat_precondition_failed",
                    details={
                        "current_state": {
                            "state": state.value,
                            "last_heartbeat": row["last_heartbeat"],
                            "lease_extended": False,
                            "ttl_seconds": ttl,
                        }
                    },
                )
            if state in (State.STOPPING, State.STOPPED):
                return {
                    "type": "work_heartbeat",
                    "last_heartbeat": row["last_heartbeat"] or "",
                    "lease_extended": False,
                    "state": state.value,
                    "ttl_seconds": ttl,
                }
            new_state = transition(state, Trigger.HEARTBEAT)
            at = now()
            beat = at.isoformat(timespec="microseconds").replace("+00:00", "Z")
            values: dict[str, Any] = {
                "state": new_state.value,
                "last_heartbeat": beat,
                "latest_heartbeat_at": at,
                "lease_expires_at": at + timedelta(seconds=ttl),
            }
            if row["started_at"] is None:
                values["started_at"] = at
            await conn.execute(s.work_items.update().where(s.work_items.c.id == work_id).values(**values))
        return {
            "type": "work_heartbeat",
            "last_heartbeat": beat,
            "lease_extended": True,
            "state": new_state.value,
            "ttl_seconds": ttl,
        }

    async def stop(self, environment_id: str, work_id: str, *, force: bool) -> dict[str, Any]:
        async with self._log.transaction() as tx:
            row = await self._get(tx.conn, environment_id, work_id)
            new = await self._apply(tx.conn, row, Trigger.FORCE_STOP if force else Trigger.STOP)
            if new is State.STOPPED:
                await self._requeue_if_needed(tx, row)
            tx.wake(row["session_id"])
            return render(await self._get(tx.conn, environment_id, work_id))

    async def _requeue_if_needed(self, tx: Tx, row: Any) -> None:
        """A worker let go of a session that is mid-turn (drained, or stopped early): queue it again."""
        srow = (
            await tx.conn.execute(
                sa.select(s.sessions.c.status, s.sessions.c.deleted_at).where(
                    s.sessions.c.id == row["session_id"]
                )
            )
        ).first()
        if srow is not None and srow.deleted_at is None and srow.status in ("running", "rescheduling"):
            await self.ensure_work(tx, row["session_id"], row["environment_id"])

    async def _apply(self, conn: AsyncConnection, row: Any, trigger: Trigger) -> State:
        new = transition(row["state"], trigger)
        at = now()
        values: dict[str, Any] = {"state": new.value}
        if trigger is Trigger.ACK:
            values.update(acknowledged_at=at, lease_expires_at=at + timedelta(seconds=self.lease_ttl_s))
        elif new is State.STOPPED:
            values.update(stopped_at=at, lease_expires_at=None)
            if row["stop_requested_at"] is None:
                values["stop_requested_at"] = at
        elif new is State.STOPPING:
            if row["stop_requested_at"] is None:
                values["stop_requested_at"] = at
        elif new is State.QUEUED:  # a lapsed lease: back to the queue for another worker
            values.update(
                queued_at=at,
                polled_at=None,
                worker_id=None,
                acknowledged_at=None,
                started_at=None,
                last_heartbeat=None,
                latest_heartbeat_at=None,
                lease_expires_at=None,
                attempt=(row["attempt"] or 0) + 1,
            )
        await conn.execute(s.work_items.update().where(s.work_items.c.id == row["id"]).values(**values))
        return new

    # -- lease expiry ------------------------------------------------------------

    async def reap_once(self) -> int:
        """Return lapsed leases to the queue (or finish stopping ones); returns how many moved."""
        at = now()
        moved = 0
        async with self._log.transaction() as tx:
            rows = (
                (
                    await tx.conn.execute(
                        sa.select(s.work_items).where(
                            s.work_items.c.state.in_(
                                (State.STARTING.value, State.ACTIVE.value, State.STOPPING.value)
                            ),
                            s.work_items.c.lease_expires_at < at,
                        )
                    )
                )
                .mappings()
                .all()
            )
            for row in rows:
                new = await self._apply(tx.conn, row, Trigger.LAPSE)
                moved += 1
                log.warning(
                    "work lease lapsed work_id=%s session_id=%s -> %s",
                    row["id"],
                    row["session_id"],
                    new.value,
                )
                if new is State.QUEUED:
                    tx.notify_work(row["environment_id"])
                    srow = (
                        await tx.conn.execute(
                            sa.select(s.sessions.c.status).where(s.sessions.c.id == row["session_id"])
                        )
                    ).first()
                    if srow is not None and srow.status == "running":
                        await change_status(tx, row["session_id"], "rescheduling")
        return moved

    async def run_reaper(self) -> None:
        while True:
            try:
                await self.reap_once()
            except Exception:  # the reaper must outlive a transient database error
                log.exception("work reaper pass failed")
            await anyio.sleep(self.reap_interval_s)

    # -- read-side -----------------------------------------------------------------

    async def retrieve(self, environment_id: str, work_id: str) -> dict[str, Any]:
        async with self._db.read() as conn:
            return render(await self._get(conn, environment_id, work_id))

    async def update_metadata(
        self, environment_id: str, work_id: str, metadata: dict[str, str | None]
    ) -> dict[str, Any]:
        async with self._db.write() as conn:
            row = await self._get(conn, environment_id, work_id)
            meta = patch_metadata(row["metadata"] or {}, metadata)
            await conn.execute(
                s.work_items.update().where(s.work_items.c.id == work_id).values(metadata=meta)
            )
            return render(await self._get(conn, environment_id, work_id))

    async def list(
        self, environment_id: str, *, limit: int | None, page_cursor: str | None
    ) -> dict[str, Any]:
        n = resolve_limit(limit)
        after = decode_cursor(page_cursor)
        q = (
            sa.select(s.work_items)
            .where(s.work_items.c.environment_id == environment_id)
            .order_by(s.work_items.c.id.desc())
            .limit(n + 1)
        )
        if after is not None:
            q = q.where(s.work_items.c.id < str(after))
        async with self._db.read() as conn:
            rows = (await conn.execute(q)).mappings().all()
        return page([render(r) for r in rows], n, lambda w: w["id"])

    async def stats(self, environment_id: str) -> dict[str, Any]:
        at = now()
        async with self._db.read() as conn:
            queued = s.work_items.c.state == State.QUEUED.value
            env = s.work_items.c.environment_id == environment_id
            depth = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(s.work_items)
                    .where(env, queued, s.work_items.c.polled_at.is_(None))
                )
            ).scalar_one()
            pending = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(s.work_items)
                    .where(env, queued, s.work_items.c.polled_at.is_not(None))
                )
            ).scalar_one()
            oldest = (
                await conn.execute(sa.select(sa.func.min(s.work_items.c.queued_at)).where(env, queued))
            ).scalar_one()
            polling = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(s.worker_polls)
                    .where(
                        s.worker_polls.c.environment_id == environment_id,
                        s.worker_polls.c.polled_at >= at - timedelta(seconds=WORKERS_POLLING_WINDOW_S),
                    )
                )
            ).scalar_one()
        return {
            "type": "work_queue_stats",
            "depth": int(depth),
            "pending": int(pending),
            "oldest_queued_at": rfc3339(utc(oldest)) if oldest else None,
            "workers_polling": int(polling),
        }
