"""``/v1/agents``: versioned agent configurations."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from inwall.api.deps import bracket_map, flag, plane, principal
from inwall.api.schemas.agents import AgentCreate, AgentUpdate
from inwall.control.auth import Principal

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.post("")
async def create_agent(
    body: AgentCreate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).agents.create(body)


@router.get("")
async def list_agents(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_api_key()
    created = bracket_map(request, "created_at", ("gte", "lte"))
    return await plane(request).agents.list(
        limit=limit,
        page_cursor=page,
        include_archived=flag(include_archived),
        created_gte=created.get("gte"),
        created_lte=created.get("lte"),
    )


@router.get("/{agent_id}")
async def get_agent(
    agent_id: str, request: Request, version: int | None = None, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).agents.get(agent_id, version)


@router.post("/{agent_id}")
async def update_agent(
    agent_id: str, body: AgentUpdate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).agents.update(agent_id, body)


@router.post("/{agent_id}/archive")
async def archive_agent(
    agent_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).agents.archive(agent_id)


@router.get("/{agent_id}/versions")
async def list_agent_versions(
    agent_id: str,
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).agents.list_versions(agent_id, limit=limit, page_cursor=page)
