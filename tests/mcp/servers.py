"""A real MCP server (the official SDK's low-level ``Server``) with the behaviours the session tests need.

Paginated ``tools/list`` (pages of 3), a tool that adds another tool and sends
``notifications/tools/list_changed``, a slow tool that records being
cancelled, large outputs, and optional bearer-token and session-expiry
middleware in front of the Streamable HTTP app.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

PAGE = 3


@dataclass
class CrmState:
    tools: list[str] = field(
        default_factory=lambda: [f"t{i}" for i in range(5)] + ["lookup", "slow", "big", "grow"]
    )
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cancelled: anyio.Event = field(default_factory=anyio.Event)
    list_requests: int = 0


def big_text(size: int) -> str:
    """``size`` characters of numbered lines (``row 000001: ...``), so a slice is easy to check."""
    lines = []
    total = 0
    i = 0
    while total < size:
        i += 1
        line = f"row {i:06d}: " + "abcdefghijklmnopqrstuvwxyz0123456789" + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines)[:size]


def _tool(name: str) -> types.Tool:
    schema: dict[str, Any] = {"type": "object", "properties": {}}
    if name == "lookup":
        schema = {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}
    elif name == "slow":
        schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}
    elif name == "big":
        schema = {"type": "object", "properties": {"size": {"type": "integer"}}}
    return types.Tool(name=name, description=f"the {name} tool", input_schema=schema)


def make_server(state: CrmState) -> Server:
    async def list_tools(
        ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        state.list_requests += 1
        start = int(params.cursor) if params and params.cursor else 0
        page = state.tools[start : start + PAGE]
        more = start + PAGE < len(state.tools)
        return types.ListToolsResult(
            tools=[_tool(n) for n in page], next_cursor=str(start + PAGE) if more else None
        )

    async def call_tool(
        ctx: ServerRequestContext, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = dict(params.arguments or {})
        state.calls.append((params.name, args))
        text: str
        if params.name not in state.tools:
            return types.CallToolResult(
                content=[types.TextContent(type="text", text="unknown tool")], is_error=True
            )
        if params.name == "lookup":
            text = json.dumps({"id": args.get("id"), "name": "ACME Corp", "tier": "gold"})
        elif params.name == "slow":
            try:
                await anyio.sleep(float(args.get("seconds", 30)))
            except anyio.get_cancelled_exc_class():
                state.cancelled.set()
                raise
            text = "finished"
        elif params.name == "big":
            text = big_text(int(args.get("size", 0)))
        elif params.name == "grow":
            if "fresh" not in state.tools:
                state.tools.append("fresh")
            await ctx.session.send_tool_list_changed()
            text = "grew a new tool"
        else:
            text = f"{params.name} ok"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    server = Server("crm", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)
    server.create_initialization_options = functools.partial(  # type: ignore[method-assign]
        server.create_initialization_options, NotificationOptions(tools_changed=True)
    )
    return server


def make_app(state: CrmState, **kwargs: Any) -> ASGIApp:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return make_server(state).streamable_http_app(transport_security=security, **kwargs)  # type: ignore[no-any-return]


class RequireBearer:
    """Answer 401 unless the request carries ``Authorization: Bearer <token>`` (lifespan passes through)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and dict(scope["headers"]).get(b"authorization") != f"Bearer {self.token}".encode()
        ):
            self.refused += 1
            await send(
                {"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]}
            )
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self.app(scope, receive, send)


class ExpireSessionOnce:
    """Pretend the server forgot the MCP session once: the next request with a session id gets a 404."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.armed = False
        self.expired = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        if (
            self.armed
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and b"mcp-session-id" in headers
        ):
            self.armed = False
            self.expired += 1
            body = json.dumps(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 404,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await self.app(scope, receive, send)
