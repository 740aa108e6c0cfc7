"""``/v1/inwall``: what the Managed Agents API has no endpoint for — users, their keys, and the audit trail."""

from __future__ import annotations

from typing import Any

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StringConstraints
from starlette.responses import StreamingResponse

from inwall.api.deps import bracket_map, flag, plane, principal
from inwall.api.schemas.common import Strict
from inwall.control.auth import Principal

router = APIRouter(prefix="/v1/inwall", tags=["inwall"])

Role = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class UserCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    roles: Annotated[list[Role], Field(max_length=64)] = Field(default_factory=list)


class UserUpdate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    roles: Annotated[list[Role], Field(max_length=64)] | None = None


@router.post("/users")
async def create_user(body: UserCreate, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.create(body.name, body.roles)


@router.get("/users")
async def list_users(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_disabled: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.list(limit=limit, page_cursor=page, include_disabled=flag(include_disabled))


@router.get("/users/{user_id}")
async def get_user(user_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.get(user_id)


@router.post("/users/{user_id}")
async def update_user(
    user_id: str, body: UserUpdate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.update(user_id, name=body.name, roles=body.roles)


@router.post("/users/{user_id}/disable")
async def disable_user(user_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.disable(user_id)


@router.post("/users/{user_id}/keys")
async def create_user_key(user_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require_admin()
    return await plane(request).users.create_key(user_id)


@router.get("/audit", response_model=None)
async def list_audit(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    kind: str | None = None,
    session_id: str | None = None,
    user_id: str | None = None,
    outcome: str | None = None,
    format: str | None = None,
    who: Principal = Depends(principal),
) -> Any:
    who.require_admin()
    cp = plane(request)
    if format == "jsonl":
        return StreamingResponse(cp.audit.export_jsonl(), media_type="application/x-ndjson")
    return await cp.audit.list(
        limit=limit,
        page_cursor=page,
        filters={
            "kind": kind,
            "session_id": session_id,
            "user_id": user_id,
            "outcome": outcome,
            "ts": bracket_map(request, "ts", ("gt", "gte", "lt", "lte")),
        },
    )
