"""Stdio children start on demand and stop cleanly: DELETE, idle, crash, shutdown; no orphans."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from inwall.gateway.app import Gateway
from inwall.gateway.stdio import StdioBridge
from tests.gateway.conftest import DOMAIN, find_exception, gateway_config, route_client, serve, stdio_route

pytestmark = pytest.mark.anyio


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def exited(pid: int) -> None:
    """Wait for any process (not only our child) to end: a pidfd turns readable when it does."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


@asynccontextmanager
async def wiki_session(port: int, **kwargs: Any) -> AsyncIterator[ClientSession]:
    async with (
        route_client(port) as http,
        streamable_http_client(f"https://wiki.{DOMAIN}/mcp", http_client=http, **kwargs) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


async def test_shutdown_stops_the_child_and_its_group(tmp_path: Path) -> None:
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki")}))
    async with serve(gateway) as port:
        async with wiki_session(port, terminate_on_close=False) as s:
            with anyio.fail_after(10):
                helper = (await s.call_tool("spawn_helper", {})).structured_content
        assert helper is not None
        (child,) = gateway.stdio_child_pids()
        grandchild = helper["result"]
        assert alive(child) and alive(grandchild)  # positive control: both really ran
    # uvicorn's lifespan shutdown left Gateway.running(): the session was never DELETEd
    assert not alive(child)  # stopped and reaped before the shutdown returned
    with anyio.fail_after(5):
        await exited(grandchild)  # SIGKILLed with its group; it ends a moment after the signal
    assert not alive(grandchild)
    assert gateway.stdio_child_pids() == []


async def test_delete_stops_the_child(tmp_path: Path) -> None:
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki")}))
    async with serve(gateway) as port:
        async with wiki_session(port) as s:
            with anyio.fail_after(10):
                await s.call_tool("echo", {"text": "x"})
            (child,) = gateway.stdio_child_pids()
        with anyio.fail_after(10):
            await gateway.stdio["wiki"].wait_children(0)  # the DELETE answered; the stop runs shielded
        assert not alive(child) and gateway.stdio["wiki"].session_count == 0


async def test_idle_session_is_stopped_and_answers_404(tmp_path: Path) -> None:
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki", idle_timeout_s=0.3)}))
    url = f"https://wiki.{DOMAIN}/mcp"
    accept = {"accept": "application/json, text/event-stream"}
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    async with serve(gateway) as port, route_client(port) as http:
        with anyio.fail_after(10):
            opened = await http.post(url, json=initialize, headers=accept)
            assert opened.status_code == 200 and "serverInfo" in opened.text
            session = {**accept, "mcp-session-id": opened.headers["mcp-session-id"]}
            (child,) = gateway.stdio_child_pids()
            await gateway.stdio["wiki"].wait_children(0)  # nobody holds the session: the idle timer fires
            assert not alive(child)
            later = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=session)
    assert later.status_code == 404 and later.json()["error"]["message"] == "Session not found"


async def test_child_crash_ends_the_session(tmp_path: Path) -> None:
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki")}))
    async with serve(gateway) as port:
        with pytest.raises(BaseException) as raised:
            async with wiki_session(port) as s:
                with anyio.fail_after(10):
                    (child,) = gateway.stdio_child_pids()
                    os.kill(child, 9)
                    await gateway.stdio["wiki"].wait_children(0)
                    await s.call_tool("echo", {"text": "x"})
        error = find_exception(raised.value, MCPError)
        assert error is not None and "Session not found" in error.message


async def test_spawn_failure_is_a_clear_502(tmp_path: Path) -> None:
    route = stdio_route("wiki")
    broken = type(route)(name="wiki", command=("/nonexistent/inwall-server",))
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": broken}))
    async with serve(gateway) as port, route_client(port) as http:
        with anyio.fail_after(10):
            response = await http.post(
                f"https://wiki.{DOMAIN}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}},
                headers={"accept": "application/json, text/event-stream"},
            )
    assert response.status_code == 502 and "could not start" in response.json()["error"]["message"]


async def test_max_sessions(tmp_path: Path) -> None:
    gateway = Gateway(gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki", max_sessions=1)}))
    async with serve(gateway) as port, wiki_session(port) as first:
        with anyio.fail_after(10):
            await first.call_tool("echo", {"text": "x"})
        with pytest.raises(BaseException) as raised:
            async with wiki_session(port):
                pass
        assert find_exception(raised.value, MCPError) is not None
        assert isinstance(gateway.stdio["wiki"], StdioBridge) and gateway.stdio["wiki"].session_count == 1
