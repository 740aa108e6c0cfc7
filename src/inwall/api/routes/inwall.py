"""``/v1/inwall``: what the Managed Agents API has no endpoint for: users, keys, audit, identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, StringConstraints
from starlette.responses import StreamingResponse

from inwall.api.deps import bracket_map, flag, plane, principal
from inwall.api.schemas.common import Strict
from inwall.control.auth import Principal
from inwall.governance import input_digest

router = APIRouter(prefix="/v1/inwall", tags=["inwall"])

Role = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class UserCreate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    roles: Annotated[list[Role], Field(max_length=64)] = Field(default_factory=list)


class UserUpdate(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None
    roles: Annotated[list[Role], Field(max_length=64)] | None = None


@router.post("/users")
async def create_user(
    body: UserCreate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
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
    return await plane(request).users.list(
        limit=limit, page_cursor=page, include_disabled=flag(include_disabled)
    )


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
async def create_user_key(
    user_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
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


@router.get("/sessions/{session_id}/identity")
async def worker_identity(
    session_id: str,
    request: Request,
    tool: str | None = None,
    input_sha256: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    """For a worker about to run a tool call: who it runs for, signed by the control plane.

    The token names the tool and a digest of its input and expires in a minute,
    so the worker can check it belongs to the very call it is executing.
    """
    cp = plane(request)
    pending = await cp.sessions.pending_tool_use(session_id, who, tool=tool, input_sha256=input_sha256)
    session, event = pending["session"], pending["event"]
    identity = await cp.gate.identity(session)
    token = cp.identity_issuer.mint(
        identity,
        audience=f"inwall-worker:{session['environment_id']}",
        tool=str(event["name"]),
        input_sha256=input_digest(event.get("input") or {}),
        tool_use_id=str(event["id"]),
        session_id=session_id,
    )
    return {"type": "identity_token", "token": token, "tool_use_id": event["id"], "tool": event["name"]}


@router.get("/identity/public_key", response_model=None)
async def identity_public_key(request: Request) -> Any:
    """The key perimeter components verify identity tokens with (pin it in their config)."""
    from starlette.responses import Response

    return Response(plane(request).identity_keys.public_pem, media_type="application/x-pem-file")


@router.get("/policy")
async def policy_status(request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    """Which tool-governance policy is in force, and whether the last edit of the file was rejected."""
    who.require_admin()
    cp = plane(request)
    engine = cp.policy_engine()
    return {
        "type": "policy_status",
        "description": engine.describe(),
        "policies": [p.id for p in engine.policies.policies] if engine.policies else [],
        **cp.policy_status,
    }
