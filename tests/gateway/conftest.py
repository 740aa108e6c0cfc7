"""Gateway test helpers: real uvicorn servers on 127.0.0.1, and a client that reaches them by route host."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
import pytest
import uvicorn

from inwall.gateway.config import GatewayConfig, HttpRoute, IdentityConfig, StdioRoute
from inwall.gateway.identity import CallerIdentity
from inwall.governance import Identity, IdentityIssuer, IdentityKeys, IdentityVerifier, input_digest

E = TypeVar("E", bound=BaseException)
SERVERS = Path(__file__).parent / "servers"
STDIO_SERVER = [sys.executable, str(SERVERS / "stdio_server.py")]
DOMAIN = "tnl-test.inwall.example"
TUNNEL_ID = "tnl_gw2test"
AUDIENCE = f"inwall-gateway:{TUNNEL_ID}"
ALICE = Identity(user_id="user_alice", kind="user", roles=("engineering",), name="alice")
BOB = Identity(user_id="user_bob", kind="user", roles=("sales",), name="bob")


@dataclass
class Signer:
    """The control plane's side of identity tokens: its key pair on disk and an issuer."""

    keys: IdentityKeys
    directory: Path

    @property
    def public_key_file(self) -> Path:
        return self.directory / "identity_ed25519.pub.pem"

    def token(
        self,
        tool: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        identity: Identity = ALICE,
        audience: str = AUDIENCE,
        tool_use_id: str | None = None,
        ttl_s: float = 60,
        clock: Callable[[], float] = time.time,
        session_id: str = "sesn_test",
    ) -> str:
        """What the control plane's runner sends for one MCP call (see agent/runner.py _identity_meta)."""
        return IdentityIssuer(self.keys.private_key, clock=clock).mint(
            identity,
            audience=audience,
            tool=tool,
            input_sha256=input_digest(arguments or {}),
            tool_use_id=tool_use_id or f"mcptoolu_{uuid.uuid4().hex}",
            session_id=session_id,
            ttl_s=ttl_s,
        )

    def identity_config(self, *, required: bool = False) -> IdentityConfig:
        return IdentityConfig(public_key_file=self.public_key_file, tunnel_id=TUNNEL_ID, required=required)

    def caller_identity(self, *, required: bool = False) -> CallerIdentity:
        return CallerIdentity(IdentityVerifier(self.keys.public_key, audience=AUDIENCE), required=required)


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    directory = tmp_path / "control-plane"
    return Signer(IdentityKeys.load_or_create(directory), directory)


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
