"""Gateway test helpers: real uvicorn servers on 127.0.0.1, and a client that reaches them by route host."""

from __future__ import annotations

import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import uvicorn

from inwall.gateway.config import GatewayConfig, HttpRoute, StdioRoute

E = TypeVar("E", bound=BaseException)
SERVERS = Path(__file__).parent / "servers"
STDIO_SERVER = [sys.executable, str(SERVERS / "stdio_server.py")]
DOMAIN = "tnl-test.inwall.example"


@asynccontextmanager
async def serve(app: Any, *, lifespan: str = "on") -> AsyncIterator[int]:
    """Run ``app`` under uvicorn on a socket that listens before the server starts (no polling)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield port
            finally:
                server.should_exit = True
    finally:
        sock.close()


class RouteTo(httpx2.AsyncBaseTransport):
    """Sends every request to 127.0.0.1:port while keeping the URL's host as the Host header.

    This is what the tunnel does: the caller names ``https://crm.<domain>/mcp``
    and the gateway sees that host; here the gateway listens on loopback.
    """

    def __init__(self, port: int) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._port = port
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["host"] = request.url.netloc.decode()
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        response = await self._inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def find_exception(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` inside (nested) exception groups: SDK failures arrive wrapped."""
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


def route_client(port: int, **kwargs: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=RouteTo(port), timeout=httpx2.Timeout(30, read=300), **kwargs)


def gateway_config(
    tmp_path: Path,
    *,
    routes: dict[str, HttpRoute] | None = None,
    stdio: dict[str, StdioRoute] | None = None,
    **kwargs: Any,
) -> GatewayConfig:
    return GatewayConfig(
        tls_cert_file=tmp_path / "server.pem",
        tls_key_file=tmp_path / "server-key.pem",
        routes=routes or {},
        stdio=stdio or {},
        audit_log=tmp_path / "audit.jsonl",
        domain=DOMAIN,
        **kwargs,
    )


def http_route(name: str, port: int, **kwargs: Any) -> HttpRoute:
    return HttpRoute(name=name, scheme="http", host="127.0.0.1", port=port, **kwargs)


def stdio_route(name: str, **kwargs: Any) -> StdioRoute:
    return StdioRoute(name=name, command=tuple(STDIO_SERVER), **kwargs)
