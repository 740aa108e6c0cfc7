"""The official MCP client calls a real MCP server through edge -> tunnel -> connector -> reverse proxy.

The MCP server (``mcp``'s MCPServer, Streamable HTTP under uvicorn on 127.0.0.1) is reachable by
the client only through the tunnel: the client's httpx2 transport is the edge's, which has no
direct route to anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer

from inwall.tunnel import TunnelConnector, TunnelEdge
from tests.tunnel.helpers import (
    DOMAIN,
    PKI,
    TOKEN,
    TUNNEL_ID,
    FakeDirectory,
    ReverseProxy,
    running_connector,
    running_edge,
    serve_asgi,
)

pytestmark = pytest.mark.anyio

MCP_URL = f"https://crm.{DOMAIN}/mcp"


def _payload(size: int) -> str:
    block = hashlib.sha256(b"customer").hexdigest()  # 64 chars of [0-9a-f]
    return (block * (size // 64 + 1))[:size]


def make_server() -> MCPServer:
    server = MCPServer("private-crm", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(structured_output=False)
    def export(size: int) -> str:
        return _payload(size)

    @server.tool()
    async def grow(ctx: Context) -> str:
        server.add_tool(lambda: "hi", name="greet", description="added at runtime")
        await ctx.session.send_tool_list_changed()
        return "grown"

    return server


@asynccontextmanager
async def private_mcp_through_tunnel(pki: PKI, directory: FakeDirectory) -> AsyncIterator[TunnelEdge]:
    app = make_server().streamable_http_app()
    async with serve_asgi(app) as mcp_port:
        proxy = ReverseProxy(f"http://127.0.0.1:{mcp_port}")
        edge = TunnelEdge(directory, connect_wait_s=2)
        try:
            async with (
                running_edge(edge) as url,
                running_connector(TunnelConnector(url, TOKEN, proxy, pki.server_ssl())),
            ):
                yield edge
        finally:
            await proxy.aclose()


@asynccontextmanager
async def mcp_session(edge: TunnelEdge, **kw: object) -> AsyncIterator[ClientSession]:
    notifications: list[object] = kw.pop("notifications", [])  # type: ignore[assignment]
    changed: anyio.Event | None = kw.pop("changed", None)  # type: ignore[assignment]

    async def on_message(message: object) -> None:
        notifications.append(message)
        if changed is not None and isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with (
        httpx2.AsyncClient(transport=edge.transport(), timeout=httpx2.Timeout(30, read=300)) as http,
        streamable_http_client(MCP_URL, http_client=http, **kw) as (read, write),  # type: ignore[arg-type]
        ClientSession(read, write, message_handler=on_message) as session,
    ):
        await session.initialize()
        yield session


async def test_official_client_calls_private_server_through_the_tunnel(
    pki: PKI, directory: FakeDirectory
) -> None:
    async with private_mcp_through_tunnel(pki, directory) as edge:
        notifications: list[object] = []
        listed_changed = anyio.Event()
        async with mcp_session(edge, notifications=notifications, changed=listed_changed) as session:
            assert session.server_info is not None and session.server_info.name == "private-crm"
            tools = {t.name for t in (await session.list_tools()).tools}
            assert tools == {"add", "export", "grow"}
            result = await session.call_tool("add", {"a": 2, "b": 3})
            assert result.structured_content == {"result": 5}
            # A server notification on the long-lived GET SSE stream crosses the tunnel too.
            assert (await session.call_tool("grow", {})).content[0].text == "grown"  # type: ignore[union-attr]
            with anyio.fail_after(5):
                await listed_changed.wait()
            assert any(isinstance(n, types.ToolListChangedNotification) for n in notifications)
            assert "greet" in {t.name for t in (await session.list_tools()).tools}
        assert edge.connections(TUNNEL_ID) == 1


@pytest.mark.slow
async def test_10_mb_tool_result_is_intact(pki: PKI, directory: FakeDirectory) -> None:
    size = 10 * 1024 * 1024
    async with (
        private_mcp_through_tunnel(pki, directory) as edge,
        mcp_session(edge, max_sse_event_size=None) as session,
    ):
        result = await session.call_tool("export", {"size": size})
    text = result.content[0].text  # type: ignore[union-attr]
    assert len(text) == size
    assert hashlib.sha256(text.encode()).hexdigest() == hashlib.sha256(_payload(size).encode()).hexdigest()


@pytest.mark.slow
async def test_200_concurrent_tool_calls_over_one_connection(pki: PKI, directory: FakeDirectory) -> None:
    async with private_mcp_through_tunnel(pki, directory) as edge:
        async with mcp_session(edge) as session:
            results: dict[int, int] = {}

            async def call(i: int) -> None:
                result = await session.call_tool("add", {"a": i, "b": 1000})
                results[i] = result.structured_content["result"]  # type: ignore[index]

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    for i in range(200):
                        tg.start_soon(call, i)
        assert edge.connections(TUNNEL_ID) == 1
    assert results == {i: i + 1000 for i in range(200)}
