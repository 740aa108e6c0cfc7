"""``/v1/environments`` and their work queues, plus environment keys under ``/v1/inwall``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request

from inwall.api.deps import flag, plane, principal
from inwall.api.schemas.common import MetadataPatch, Strict
from inwall.api.schemas.environments import EnvironmentCreate, EnvironmentUpdate
from inwall.control.auth import Principal
from inwall.errors import NotFound, PermissionDenied

router = APIRouter(tags=["environments"])


class WorkUpdate(Strict):
    metadata: MetadataPatch


class WorkStop(Strict):
    force: bool | None = None


def _env_worker(who: Principal, environment_id: str) -> None:
    """Poll/ack: the environment's own key (or the admin key, for operators)."""
    if who.is_admin:
        return
    if who.kind == "environment" and who.environment_id == environment_id:
        return
    if who.kind in ("environment", "session"):
        # Keys of another environment learn nothing about this one.
        raise NotFound(f"environment {environment_id} not found", error_code="environment_not_found")
    raise PermissionDenied("the work queue is served with an environment key")


def _item_holder(who: Principal, environment_id: str, work_id: str) -> None:
    """Heartbeat/stop: the environment key, or the session token minted for this very item."""
    if who.kind == "session":
        if who.environment_id != environment_id or who.work_id != work_id:
            raise NotFound(f"work item {work_id} not found")
        return
    if who.kind == "environment":
        _env_worker(who, environment_id)


@router.post("/v1/environments")
async def create_environment(
    body: EnvironmentCreate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).environments.create(body)


@router.get("/v1/environments")
async def list_environments(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).environments.list(
        limit=limit, page_cursor=page, include_archived=flag(include_archived)
    )


@router.get("/v1/environments/{environment_id}")
async def get_environment(
    environment_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    if not who.is_api_key:
        _env_worker(who, environment_id)
    return await plane(request).environments.get(environment_id)


@router.post("/v1/environments/{environment_id}")
async def update_environment(
    environment_id: str, body: EnvironmentUpdate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).environments.update(environment_id, body)


@router.delete("/v1/environments/{environment_id}")
async def delete_environment(
    environment_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).environments.delete(environment_id)


@router.post("/v1/environments/{environment_id}/archive")
async def archive_environment(
    environment_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).environments.archive(environment_id)


@router.post("/v1/inwall/environments/{environment_id}/keys")
async def create_environment_key(
    environment_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_admin()
    cp = plane(request)
    await cp.environments.get(environment_id)
    key_id, key = await cp.keys.create("environment", environment_id=environment_id)
    return {"type": "environment_key", "id": key_id, "environment_id": environment_id, "key": key}


# -- the work queue -------------------------------------------------------------------------


@router.get("/v1/environments/{environment_id}/work/poll")
async def poll_work(
    environment_id: str,
    request: Request,
    block_ms: int | None = None,
    reclaim_older_than_ms: int | None = None,
    anthropic_worker_id: Annotated[str | None, Header()] = None,
    who: Principal = Depends(principal),
) -> Any:
    _env_worker(who, environment_id)
    cp = plane(request)
    await cp.environments.require_usable_by_id(environment_id)
    # An empty poll is the JSON literal null (the SDK turns it into None).
    return await cp.work.poll(
        environment_id,
        worker_id=anthropic_worker_id,
        block_ms=block_ms,
        reclaim_older_than_ms=reclaim_older_than_ms,
    )


@router.get("/v1/environments/{environment_id}/work/stats")
async def work_stats(
    environment_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    if not who.is_api_key:
        _env_worker(who, environment_id)
    cp = plane(request)
    await cp.environments.get(environment_id)
    return await cp.work.stats(environment_id)


@router.get("/v1/environments/{environment_id}/work")
async def list_work(
    environment_id: str,
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    if not who.is_api_key:
        _env_worker(who, environment_id)
    cp = plane(request)
    await cp.environments.get(environment_id)
    return await cp.work.list(environment_id, limit=limit, page_cursor=page)


@router.get("/v1/environments/{environment_id}/work/{work_id}")
async def get_work(
    environment_id: str, work_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).work.retrieve(environment_id, work_id)


@router.post("/v1/environments/{environment_id}/work/{work_id}")
async def update_work(
    environment_id: str, work_id: str, body: WorkUpdate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).work.update_metadata(environment_id, work_id, dict(body.metadata))


@router.post("/v1/environments/{environment_id}/work/{work_id}/ack")
async def ack_work(
    environment_id: str, work_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    if who.kind == "session":
        _item_holder(who, environment_id, work_id)
    else:
        _env_worker(who, environment_id)
    return await plane(request).work.ack(environment_id, work_id)


@router.post("/v1/environments/{environment_id}/work/{work_id}/heartbeat")
async def heartbeat_work(
    environment_id: str,
    work_id: str,
    request: Request,
    expected_last_heartbeat: str | None = None,
    desired_ttl_seconds: Annotated[int | None, Query(ge=1)] = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    if not who.is_admin:
        _item_holder(who, environment_id, work_id)
        if who.kind == "user":
            raise PermissionDenied("heartbeats come from the worker holding the lease")
    return await plane(request).work.heartbeat(
        environment_id,
        work_id,
        expected_last_heartbeat=expected_last_heartbeat,
        desired_ttl_seconds=desired_ttl_seconds,
    )


@router.post("/v1/environments/{environment_id}/work/{work_id}/stop")
async def stop_work(
    environment_id: str,
    work_id: str,
    request: Request,
    body: WorkStop | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    if not who.is_api_key:
        _item_holder(who, environment_id, work_id)
    return await plane(request).work.stop(environment_id, work_id, force=bool(body and body.force))
