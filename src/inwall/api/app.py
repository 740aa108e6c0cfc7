"""The ASGI application: routers, error handlers, and the body-size guard around them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from inwall import __version__
from inwall.api.errors import install_error_handlers
from inwall.api.limits import BodyLimit
from inwall.api.routes import agents, environments, health, inwall, sessions, tunnels

if TYPE_CHECKING:
    from inwall.server.plane import ControlPlane

__all__ = ["build_app"]


def build_fastapi(plane: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="inwall control plane",
        version=__version__,
        description="A self-hosted Managed Agents API: agents, environments, sessions, events, tunnels.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.plane = plane
    install_error_handlers(app)
    for module in (health, agents, environments, sessions, tunnels, inwall):
        app.include_router(module.router)
    return app


def build_app(plane: ControlPlane, **extra: Any) -> ASGIApp:
    return BodyLimit(build_fastapi(plane), max_bytes=plane.settings.max_body_bytes)
