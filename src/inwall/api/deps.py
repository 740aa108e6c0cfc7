"""Request-scoped dependencies: the control plane and the caller's identity."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request

from inwall.control.auth import Principal
from inwall.errors import InvalidInput

if TYPE_CHECKING:
    from inwall.server.plane import ControlPlane

__all__ = ["bracket_list", "bracket_map", "credential_of", "flag", "plane", "principal"]


def plane(request: Request) -> ControlPlane:
    return request.app.state.plane  # type: ignore[no-any-return]  # set once in build_app


def credential_of(request: Request) -> str | None:
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return request.headers.get("x-api-key") or None


async def principal(request: Request) -> Principal:
    return await plane(request).keys.authenticate(credential_of(request))


def bracket_list(request: Request, name: str) -> list[str]:
    """``statuses[]=a&statuses[]=b`` (the SDK's array format), also accepting ``statuses=a``."""
    return request.query_params.getlist(f"{name}[]") + request.query_params.getlist(name)


def bracket_map(request: Request, name: str, keys: tuple[str, ...]) -> dict[str, str]:
    """``created_at[gte]=...`` style filters."""
    out = {}
    for key in keys:
        value = request.query_params.get(f"{name}[{key}]")
        if value:
            out[key] = value
    return out


def flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (None, ""):
        return False
    if str(value).lower() in ("true", "1"):
        return True
    if str(value).lower() in ("false", "0"):
        return False
    raise InvalidInput(f"expected true or false, got {value!r}")
