"""The control plane's MCP pool against real MCP servers: what is retried after a failure, and what is not.

A tool with side effects must not run twice: ``tools/call`` is retried only when the server
provably never got it. The servers are the official SDK's, under uvicorn on 127.0.0.1,
reached directly or through a real tunnel (edge, WebSocket link, connector).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp.server.mcpserver import MCPServer

from inwall.errors import InwallError
from inwall.mcp.pool import McpPool, running_pool
from inwall.mcp.types import McpFailure, McpServerRef
from inwall.tunnel import TunnelConnector, TunnelEdge
from tests.helpers import serve_asgi as serve_url
from tests.mcp.servers import CrmState, make_app
from tests.tunnel.helpers import (
    DOMAIN,
    PKI,
    TOKEN,
    TUNNEL_ID,
    FakeDirectory,
    ReverseProxy,
    make_pki,
    running_edge,
    serve_asgi,
)

pytestmark = pytest.mark.anyio

SESSION = "sesn_pool_test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Ledger:
    """An MCP server whose ``charge`` tool has a side effect: every call is booked.

    The first call books, then hangs until the test cuts the connection under it; later
    calls book and answer at once.
    """

    def __init__(self) -> None:
        self.booked: list[int] = []
        self.first_booked = anyio.Event()
        self.server = MCPServer("ledger", log_level="WARNING")

        @self.server.tool()
        async def charge(amount: int) -> str:
            self.booked.append(amount)
            if len(self.booked) == 1:
                self.first_booked.set()
                await anyio.sleep_forever()
            return f"charged {amount}"


@asynccontextmanager
async def gateway_that_reconnects(url: str, app: ReverseProxy, pki: PKI) -> AsyncIterator[None]:
    """Keep one tunnel connection up, redialling when the edge closes it (as ``inwall gateway`` does)."""

    async def supervise() -> None:
        while True:
            with contextlib.suppress(InwallError):  # the edge closed it: dial again
                await TunnelConnector(url, TOKEN, app, pki.server_ssl()).run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(supervise)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


async def test_a_call_cut_off_by_a_dropped_tunnel_connection_is_not_run_twice(pki: PKI) -> None:
    directory = FakeDirectory()
    directory.add_tunnel(TUNNEL_ID, DOMAIN, TOKEN, "tokid-1", [pki.ca_pem])
    ledger = Ledger()
    server = McpServerRef("ledger", f"https://ledger.{DOMAIN}/mcp")
    edge = TunnelEdge(directory, connect_wait_s=5, drain_timeout_s=0.05)
    async with serve_asgi(ledger.server.streamable_http_app()) as port:
        proxy = ReverseProxy(f"http://127.0.0.1:{port}")
        try:
            async with (
                running_edge(edge) as url,
                gateway_that_reconnects(url, proxy, pki),
                running_pool(McpPool(transport_factory=edge.transport, connect_timeout_s=5)) as pool,
            ):
                with anyio.fail_after(5):
                    await edge.wait_connections(TUNNEL_ID, lambda n: n == 1)
                    assert [t.name for t in await pool.list_tools(SESSION, server)] == ["charge"]
                outcome: list[object] = []
                done = anyio.Event()

                async def call() -> None:
                    try:
                        outcome.append(
                            await pool.call_tool(SESSION, server, "charge", {"amount": 100}, timeout_s=30)
                        )
                    except McpFailure as exc:
                        outcome.append(exc)
                    done.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(call)
                    with anyio.fail_after(5):
                        await ledger.first_booked.wait()
                    # The gateway connection carrying the call goes away; a new one comes up at once.
                    await edge.disconnect_tunnel(TUNNEL_ID, reason="test: connection lost")
                    with anyio.fail_after(15):
                        await done.wait()
                # Delivered, then the connection died: it may have run, so it is reported, not retried.
                assert ledger.booked == [100]
                [failure] = outcome
                assert isinstance(failure, McpFailure)
                assert failure.kind == "connection"
                assert failure.session_error_type == "mcp_connection_failed_error"
                assert "may have run" in str(failure) and "'charge'" in str(failure)
                # Listing is still retried freely, on a fresh session over the new connection.
                with anyio.fail_after(10):
                    assert [t.name for t in await pool.list_tools(SESSION, server)] == ["charge"]
        finally:
            await proxy.aclose()


class RefuseOneToolCall(httpx2.AsyncBaseTransport):
    """httpx2's own transport, except that one ``tools/call`` POST fails to connect (nothing is
    sent), as when the server's port is closed for a moment."""

    def __init__(self, refusals: list[str]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.refusals = refusals

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if not self.refusals and request.method == "POST" and b'"tools/call"' in request.content:
            self.refusals.append(request.url.path)
            raise httpx2.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_call_that_never_left_is_retried_once(tmp_path: Path) -> None:
    state = CrmState()
    refusals: list[str] = []
    transports = 0

    def factory() -> httpx2.AsyncBaseTransport:
        nonlocal transports
        transports += 1
        return RefuseOneToolCall(refusals)

    async with serve_url(make_app(state)) as base, running_pool(McpPool(transport_factory=factory)) as pool:
        server = McpServerRef("crm", f"{base}/mcp")
        with anyio.fail_after(10):
            result = await pool.call_tool(SESSION, server, "t1", {}, timeout_s=5)
    assert result.content == [{"type": "text", "text": "t1 ok"}] and not result.is_error
    assert refusals == ["/mcp"] and transports == 2  # retried once, on a fresh session
    assert state.calls == [("t1", {})]


async def test_sse_events_are_bounded_but_large_results_fit(tmp_path: Path) -> None:
    from inwall.mcp.pool import MAX_SSE_EVENT_BYTES

    assert MAX_SSE_EVENT_BYTES == 64 * 1024 * 1024
    state = CrmState()
    async with serve_url(make_app(state)) as base:
        server = McpServerRef("crm", f"{base}/mcp")
        # Over the SDK's 1 MiB default, well under ours.
        async with running_pool(McpPool()) as pool:
            with anyio.fail_after(20):
                result = await pool.call_tool(SESSION, server, "big", {"size": 2 * 1024 * 1024}, timeout_s=15)
        assert not result.is_error and len(result.content[0]["text"]) == 2 * 1024 * 1024
        # An event over the bound is refused instead of buffered.
        async with running_pool(McpPool(max_sse_event_bytes=64 * 1024)) as pool:
            with anyio.fail_after(20), pytest.raises(McpFailure) as failure:
                await pool.call_tool(SESSION, server, "big", {"size": 256 * 1024}, timeout_s=15)
        assert failure.value.kind == "connection"
    with pytest.raises(ValueError, match="max_sse_event_bytes"):
        McpPool(max_sse_event_bytes=0)
