"""Runs one ``SessionRunner`` per session that has work, inside the server's task group.

The bus calls ``poke`` whenever a session's log grows; ``poke`` starts a runner
if none is alive. A runner only exits after checking, without yielding to the
event loop, that no wake-up is pending — so a wake-up can never fall between
a runner's last look and its exit.
"""

from __future__ import annotations

import logging

import anyio
import sqlalchemy as sa
from anyio.abc import TaskGroup

from inwall.agent.runner import RunnerDeps, SessionRunner
from inwall.store import schema as s

__all__ = ["Engine"]

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, deps: RunnerDeps, *, restart_delay_s: float = 1.0) -> None:
        self.deps = deps
        self._tg: TaskGroup | None = None
        self._running: set[str] = set()
        self._restart_delay_s = restart_delay_s

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self.deps.log.bus.on_wake = self.poke
            await self.resume_all()
            task_status.started()
            await anyio.sleep_forever()

    async def resume_all(self) -> None:
        """After a restart: every session that was mid-turn (or has unread input) gets a runner."""
        unread = (
            sa.select(s.events.c.id)
            .where(s.events.c.session_id == s.sessions.c.id, s.events.c.processed_at.is_(None))
            .exists()
        )
        async with self.deps.db.read() as conn:
            rows = await conn.execute(
                sa.select(s.sessions.c.id).where(
                    s.sessions.c.deleted_at.is_(None),
                    sa.or_(s.sessions.c.status.in_(("running", "rescheduling")), unread),
                )
            )
            ids = [r.id for r in rows]
        for session_id in ids:
            self.poke(session_id)

    def poke(self, session_id: str) -> None:
        if self._tg is None or session_id in self._running:
            return
        self._running.add(session_id)
        self._tg.start_soon(self._supervise, session_id, name=f"session-runner-{session_id}")

    async def _supervise(self, session_id: str) -> None:
        try:
            while True:
                try:
                    await SessionRunner(session_id, self.deps).run()
                except Exception:
                    # A bug or a database outage must not kill the server or lose the
                    # session: log it, back off, and rebuild the runner from the log.
                    log.exception("session runner failed; restarting it session_id=%s", session_id)
                    await anyio.sleep(self._restart_delay_s)
                else:
                    return
        finally:
            # No await since the runner's last take_wake found nothing: a wake-up after this
            # line creates a fresh signal and pokes a new runner, so none is lost.
            self._running.discard(session_id)
            self.deps.log.bus.forget_session(session_id)

    @property
    def active(self) -> int:
        return len(self._running)
