"""Session status changes: the row and the matching ``session.status_*`` event move together.

Every status change goes through ``change_status`` inside the caller's
transaction, so the session's ``status`` and the event stream can never
disagree (a client that reads one and then the other sees the same story).
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa

from inwall.control.events import Tx
from inwall.control.timefmt import utc
from inwall.ids import now
from inwall.store import schema as s

__all__ = ["SessionStatus", "change_status"]

SessionStatus = Literal["rescheduling", "running", "idle", "terminated"]

_EVENT = {
    "running": "session.status_running",
    "idle": "session.status_idle",
    "rescheduling": "session.status_rescheduled",
    "terminated": "session.status_terminated",
}


async def change_status(
    tx: Tx,
    session_id: str,
    status: SessionStatus,
    *,
    stop_reason: dict[str, Any] | None = None,
    force_event: bool = False,
) -> bool:
    """Move the session to ``status``; returns False (and emits nothing) when it is already there.

    ``force_event`` re-emits an idle whose stop reason changed (a requires_action
    idle re-sent with the remaining event ids, as the API documents).
    """
    row = (
        await tx.conn.execute(
            sa.select(
                s.sessions.c.status,
                s.sessions.c.body,
                s.sessions.c.running_since,
                s.sessions.c.active_seconds,
            ).where(s.sessions.c.id == session_id)
        )
    ).first()
    if row is None or row.status == "terminated":
        return False
    body = dict(row.body)
    same = row.status == status and (status != "idle" or body.get("stop_reason") == stop_reason)
    if same and not force_event:
        return False
    at = now()
    values: dict[str, Any] = {"status": status, "updated_at": at}
    if status == "running" and row.running_since is None:
        values["running_since"] = at
    if status != "running" and row.running_since is not None:
        values["running_since"] = None
        values["active_seconds"] = (
            float(row.active_seconds or 0.0) + (at - (utc(row.running_since) or at)).total_seconds()
        )
    body["stop_reason"] = stop_reason if status == "idle" else None
    values["body"] = body
    await tx.conn.execute(s.sessions.update().where(s.sessions.c.id == session_id).values(**values))
    event: dict[str, Any] = {"type": _EVENT[status]}
    if status == "idle":
        event["stop_reason"] = stop_reason or {"type": "end_turn"}
        event["stop_details"] = None
    await tx.append(session_id, [event])
    return True
