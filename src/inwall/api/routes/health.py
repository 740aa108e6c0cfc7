"""``/healthz``: 200 once the server is ready (database migrated, background tasks up)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from inwall.api.deps import plane

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None)
async def healthz(request: Request) -> Any:
    cp = plane(request)
    if not cp.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return {"status": "ok", "sessions_running": cp.engine.active}
