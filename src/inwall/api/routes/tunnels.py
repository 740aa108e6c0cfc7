"""``/v1/tunnels``: tunnels, their tokens and CA certificates, and the gateways' connect endpoint."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, WebSocket
from pydantic import StringConstraints

from inwall.api.deps import flag, plane, principal
from inwall.api.schemas.common import Strict
from inwall.control.auth import Principal

router = APIRouter(prefix="/v1/tunnels", tags=["tunnels"])


class TunnelCreate(Strict):
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=255)] | None = None


class TokenRotate(Strict):
    reason: Annotated[str, StringConstraints(max_length=1024)] | None = None


class CertificateCreate(Strict):
    ca_certificate_pem: Annotated[str, StringConstraints(min_length=1, max_length=16 * 1024)]


@router.websocket("/connect")
async def connect(websocket: WebSocket) -> None:
    """Gateways dial in here (outbound from their network); the edge authenticates the token."""
    await websocket.app.state.plane.edge.websocket_endpoint(websocket)


@router.post("")
async def create_tunnel(
    request: Request, body: TunnelCreate | None = None, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.create(body.display_name if body else None)


@router.get("")
async def list_tunnels(
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.list(
        limit=limit, page_cursor=page, include_archived=flag(include_archived)
    )


@router.get("/{tunnel_id}")
async def get_tunnel(tunnel_id: str, request: Request, who: Principal = Depends(principal)) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.get(tunnel_id)


@router.post("/{tunnel_id}/archive")
async def archive_tunnel(
    tunnel_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.archive(tunnel_id)


@router.post("/{tunnel_id}/reveal_token")
async def reveal_token(
    tunnel_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    cp = plane(request)
    result = await cp.tunnels.reveal_token(tunnel_id)
    await cp.audit.safe_record(
        "tunnel.token.revealed", outcome="ok", tunnel_id=tunnel_id, **who.audit_fields()
    )
    return result


@router.post("/{tunnel_id}/rotate_token")
async def rotate_token(
    tunnel_id: str, request: Request, body: TokenRotate | None = None, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    cp = plane(request)
    result = await cp.tunnels.rotate_token(tunnel_id, body.reason if body else None)
    await cp.audit.safe_record(
        "tunnel.token.rotated",
        outcome="ok",
        tunnel_id=tunnel_id,
        reason=body.reason if body else None,
        **who.audit_fields(),
    )
    return result


@router.post("/{tunnel_id}/certificates")
async def add_certificate(
    tunnel_id: str, body: CertificateCreate, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.add_certificate(tunnel_id, body.ca_certificate_pem)


@router.get("/{tunnel_id}/certificates")
async def list_certificates(
    tunnel_id: str,
    request: Request,
    limit: int | None = None,
    page: str | None = None,
    include_archived: str | None = None,
    who: Principal = Depends(principal),
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.list_certificates(
        tunnel_id, limit=limit, page_cursor=page, include_archived=flag(include_archived)
    )


@router.get("/{tunnel_id}/certificates/{certificate_id}")
async def get_certificate(
    tunnel_id: str, certificate_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.get_certificate(tunnel_id, certificate_id)


@router.post("/{tunnel_id}/certificates/{certificate_id}/archive")
async def archive_certificate(
    tunnel_id: str, certificate_id: str, request: Request, who: Principal = Depends(principal)
) -> dict[str, Any]:
    who.require_api_key()
    return await plane(request).tunnels.archive_certificate(tunnel_id, certificate_id)
