"""An MCP server over Streamable HTTP (the `mcp` SDK's MCPServer), served in-process by the tests."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

TOOLS = ("echo", "add", "secret_dump", "big", "slow")
BLOCK = "".join(chr(33 + i % 90) for i in range(4093))


def make_server(name: str = "crm") -> MCPServer:
    mcp = MCPServer(name, log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    @mcp.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool()
    def secret_dump() -> str:
        return "THE-SECRET-ROWS"

    @mcp.tool()
    def big(size: int) -> str:
        return (BLOCK * (size // len(BLOCK) + 1))[:size]

    @mcp.tool()
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    return mcp


def make_app(name: str = "crm", **kwargs: object) -> Starlette:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return make_server(name).streamable_http_app(transport_security=security, **kwargs)  # type: ignore[arg-type]
