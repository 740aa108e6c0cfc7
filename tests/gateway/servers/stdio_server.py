"""An MCP server over stdio, run by the gateway as a child: `python stdio_server.py`.

`add_tool` adds a tool and sends notifications/tools/list_changed (the
standalone route: it reaches the client on the GET stream). `spawn_helper`
starts a long sleep in the server's process group, to prove the gateway stops
the whole group. `env_dump` returns the environment, to prove what the child
is given; `meta_dump` the request's `_meta`, to prove what reached it.
"""

from __future__ import annotations

import os
import subprocess

from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("wiki", log_level="WARNING")


@mcp.tool()
def echo(text: str) -> str:
    return text


@mcp.tool()
def secret_dump() -> str:
    return "THE-SECRET-PAGES"


@mcp.tool()
def env_dump() -> dict[str, str]:
    return dict(os.environ)


@mcp.tool()
def spawn_helper() -> int:
    helper = subprocess.Popen(["sleep", "300"], stdin=subprocess.DEVNULL)
    return helper.pid


@mcp.tool()
def meta_dump(ctx: Context) -> dict[str, object]:
    """The request's _meta as the server received it (the gateway must have stripped its token)."""
    return dict(ctx.request_context.meta or {})


@mcp.tool()
async def report_progress(steps: int, ctx: Context) -> str:
    for i in range(steps):
        await ctx.report_progress(i + 1, steps, f"step {i + 1}")
    return "progressed"


@mcp.tool()
async def add_tool(name: str, ctx: Context) -> str:
    def dynamic() -> str:
        return f"I am {name}"

    mcp.add_tool(dynamic, name=name, description="added at run time")
    await ctx.session.send_tool_list_changed()
    return f"added {name}"


if __name__ == "__main__":
    mcp.run()
