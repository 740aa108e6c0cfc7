"""``/v1/sessions``: sessions, their event log, and the live event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from inwall.api.deps import bracket_list, bracket_map, flag, plane, principal
from inwall.api.schemas.sessions import EventsSend, SessionCreate, SessionUpdate
from inwall.api.sse import event_stream
from inwall.control.auth import Principal
from inwall.errors import InvalidInput
from inwall.store import schema as s

if TYPE_CHECKING:
    from inwall.server.plane import ControlPlane

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SESSION_STATUSES = ("rescheduling", "running", "idle", "terminated")
CREATED_OPS = ("gt", "gte", "lt", "lte")


END_USER_HEADER = "x-inwall-end-user-token"


@router.post("")
async def create_session(
    body: SessionCreate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    cp = plane(request)
    acting_for: dict[str, Any] | None = None
    token = request.headers.get(END_USER_HEADER)
    if token:
        if cp.oidc is None:
            raise InvalidInput(
                f"{END_USER_HEADER} was sent but this server accepts no end-user tokens "
                "(start it with --oidc-issuer and --oidc-audience)"
            )
        end_user = await cp.oidc.validate(token)
        acting_for = {
            "user_id": end_user.user_id,
            "kind": end_user.kind,
            "roles": list(end_user.roles),
            "name": end_user.name,
            "claims": dict(end_user.claims),
        }
    return await cp.sessions.create(body, who, acting_for=acting_for)


@router.get("")
async def list_sessions(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    order: str | None = None,
    agent_id: str | None = None,
    agent_version: int | None = None,
    include_archived: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    statuses = bracket_list(request, "statuses")
    bad = [x for x in statuses if x not in SESSION_STATUSES]
    if bad:
        raise InvalidInput(f"unknown status {bad[0]!r}; expected one of {', '.join(SESSION_STATUSES)}")
    if order not in (None, "asc", "desc"):
        raise InvalidInput("order must be 'asc' or 'desc'")
    return await plane(request).sessions.list(
        who,
        params={
            "limit": limit,
            "page": page,
            "order": order or "desc",
            "agent_id": agent_id,
            "agent_version": agent_version,
            "include_archived": flag(include_archived),
            "statuses": statuses,
            "created_at": bracket_map(request, "created_at", CREATED_OPS),
        },
    )


@router.get("/{session_id}")
async def get_session(
    session_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    return await plane(request).sessions.get(session_id, who)


@router.post("/{session_id}")
async def update_session(
    session_id: str, body: SessionUpdate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    return await plane(request).sessions.update(session_id, body, who)


@router.delete("/{session_id}")
async def delete_session(
    session_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    return await plane(request).sessions.delete(session_id, who)


@router.post("/{session_id}/archive")
async def archive_session(
    session_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    return await plane(request).sessions.archive(session_id, who)


@router.get("/{session_id}/events")
async def list_events(
    session_id: str,
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    order: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    cp = plane(request)
    await cp.sessions.require(session_id, who)
    return await cp.events.list(
        session_id,
        limit=limit,
        page_cursor=page,
        order=order,
        types=bracket_list(request, "types"),
        created=bracket_map(request, "created_at", CREATED_OPS),
    )


@router.post("/{session_id}/events")
async def send_events(
    session_id: str, body: EventsSend, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    return await plane(request).sessions.send_events(session_id, body, who)


@router.get("/{session_id}/events/stream")
async def stream_events(
    session_id: str, request: Request, who: Principal = Depends(principal)
) -> StreamingResponse:
    cp = plane(request)
    deltas = bracket_list(request, "event_deltas")
    bad = [d for d in deltas if d not in ("agent.message", "agent.thinking")]
    if bad:
        raise InvalidInput(f"event_deltas supports agent.message and agent.thinking, not {bad[0]!r}")

    # Subscribe before reading the status: an end committed after this line reaches the
    # stream, and one committed before it shows in the status (and is replayed below).
    subscription = cp.bus.open(session_id)
    try:
        row = await cp.sessions.require(session_id, who)
        preface = await _final_event(cp, session_id) if row["status"] == "terminated" else []
    except BaseException:
        subscription.close()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in event_stream(
                subscription.events, heartbeat_s=cp.settings.sse_heartbeat_s, preface=preface
            ):
                yield chunk
        finally:
            subscription.close()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        background=BackgroundTask(subscription.close),  # also when the body never started
    )


async def _final_event(cp: ControlPlane, session_id: str) -> list[dict[str, Any]]:
    """A terminated session's final event, replayed so a late client's stream stops too."""
    async with cp.db.read() as conn:
        last = (
            await conn.execute(
                sa.select(s.events.c.body)
                .where(s.events.c.session_id == session_id, s.events.c.type == "session.status_terminated")
                .order_by(s.events.c.seq.desc())
                .limit(1)
            )
        ).first()
    return [] if last is None else [last.body]
