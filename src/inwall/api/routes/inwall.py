"""``/v1/inwall``: what the Managed Agents API has no endpoint for — audit (users and keys come with governance)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import StreamingResponse

from inwall.api.deps import bracket_map, plane, principal
from inwall.control.auth import Principal

router = APIRouter(prefix="/v1/inwall", tags=["inwall"])


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
