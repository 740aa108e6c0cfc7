"""The gateway app under uvicorn, in front of real MCP servers, driven by the official `mcp` client."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from inwall.gateway.app import Gateway
from tests.gateway.conftest import (
    DOMAIN,
    find_exception,
    gateway_config,
    http_route,
    route_client,
    serve,
    stdio_route,
)
from tests.gateway.servers.http_server import BLOCK, make_app

pytestmark = pytest.mark.anyio

SECRET_ARGUMENT = "hunter2-argument-value"


@asynccontextmanager
async def session(port: int, route: str, **kwargs: Any) -> AsyncIterator[ClientSession]:
    async with (
        route_client(port) as http,
        streamable_http_client(f"https://{route}.{DOMAIN}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, **kwargs) as s,
    ):
        await s.initialize()
        yield s


class Upstream:
    """A real MCPServer under uvicorn that counts the requests it receives."""

    def __init__(self, **app_kwargs: Any) -> None:
        self.app = make_app(**app_kwargs)
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def recording_receive() -> Any:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        try:
            await self.app(scope, recording_receive, send)
        finally:
            self.bodies.append(b"".join(chunks))

    def saw_tool(self, name: str) -> bool:
        return any(f'"name":"{name}"'.encode() in b.replace(b" ", b"") for b in self.bodies)


@asynccontextmanager
async def gateway_over(
    tmp_path: Path, upstream_port: int, **gateway_kwargs: Any
) -> AsyncIterator[tuple[int, Gateway]]:
    config = gateway_config(
        tmp_path,
        routes={"crm": http_route("crm", upstream_port, deny_tools=frozenset({"secret_dump"}))},
        stdio={
            "wiki": stdio_route(
                "wiki", allow_tools=frozenset({"echo", "add_tool", "report_progress", "env_dump"})
            )
        },
    )
    gateway = Gateway(config, **gateway_kwargs)
    async with serve(gateway) as port:
        yield port, gateway


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_http_route_lists_allowed_tools_and_denies_the_rest(
    tmp_path: Path, json_response: bool
) -> None:
    upstream = Upstream(json_response=json_response)
    async with serve(upstream) as up, gateway_over(tmp_path, up) as (port, _), session(port, "crm") as s:
        with anyio.fail_after(10):
            assert s.server_info is not None and s.server_info.name == "crm"
            names = {t.name for t in (await s.list_tools()).tools}
            assert names == {"echo", "add", "big", "slow"}  # secret_dump filtered out of the listing
            result = await s.call_tool("add", {"a": 2, "b": 3})
            assert result.structured_content == {"result": 5}  # positive control: calls go through
            with pytest.raises(MCPError) as denied:
                await s.call_tool("secret_dump", {"why": SECRET_ARGUMENT})
    assert denied.value.code == types.INVALID_PARAMS
    assert "not allowed by the inwall gateway" in denied.value.message
    assert upstream.saw_tool("add") and not upstream.saw_tool("secret_dump")  # the upstream never saw it


async def test_modern_era_client_is_filtered_and_denied_too(tmp_path: Path) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, gateway_over(tmp_path, up) as (port, _), route_client(port) as http:
        client = Client(streamable_http_client(f"https://crm.{DOMAIN}/mcp", http_client=http), cache=None)
        with anyio.fail_after(10):
            async with client:
                assert client.protocol_version == "2026-07-28"
                names = {t.name for t in (await client.list_tools()).tools}
                assert names == {"echo", "add", "big", "slow"}
                assert (await client.call_tool("echo", {"text": "modern"})).structured_content == {
                    "result": "modern"
                }
                with pytest.raises(MCPError) as denied:
                    await client.call_tool("secret_dump", {})
    assert denied.value.code == types.INVALID_PARAMS
    assert not upstream.saw_tool("secret_dump")


async def test_stdio_route_with_progress_and_list_changed(tmp_path: Path) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with (
        gateway_over(tmp_path, 1) as (port, gateway),
        session(port, "wiki", message_handler=on_message) as s,
    ):
        with anyio.fail_after(10):
            assert s.server_info is not None and s.server_info.name == "wiki"
            names = {t.name for t in (await s.list_tools()).tools}
            assert names == {"echo", "add_tool", "report_progress", "env_dump"}
            result = await s.call_tool("report_progress", {"steps": 3}, progress_callback=on_progress)
            assert result.structured_content == {"result": "progressed"} and progress == [1, 2, 3]
            await s.call_tool("add_tool", {"name": "fresh"})
            await changed.wait()  # notifications/tools/list_changed from the child reached the client
            with pytest.raises(MCPError) as denied:
                await s.call_tool("secret_dump", {})
            assert denied.value.code == types.INVALID_PARAMS
            assert len(gateway.stdio_child_pids()) == 1


async def test_stdio_child_gets_only_path_home_lang_and_its_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INWALL_TUNNEL_TOKEN", "tok-must-not-leak")
    monkeypatch.setenv("LANG", "C.UTF-8")
    config = gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki", env={"WIKI_DB": "/srv/wiki.db"})})
    async with serve(Gateway(config)) as port, session(port, "wiki") as s:
        with anyio.fail_after(10):
            env = (await s.call_tool("env_dump", {})).structured_content
    assert env is not None
    assert env["WIKI_DB"] == "/srv/wiki.db" and env["LANG"] == "C.UTF-8" and "PATH" in env
    assert "INWALL_TUNNEL_TOKEN" not in env and "tok-must-not-leak" not in json.dumps(env)
    assert set(env) - {"PATH", "HOME", "LANG", "WIKI_DB"} <= {"LC_CTYPE", "PWD"}  # what Python itself may set


async def test_auto_mode_client_falls_back_to_the_handshake_on_stdio(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, stdio={"wiki": stdio_route("wiki")})
    async with serve(Gateway(config)) as port, route_client(port) as http:
        client = Client(streamable_http_client(f"https://wiki.{DOMAIN}/mcp", http_client=http), cache=None)
        with anyio.fail_after(10):
            async with client:
                assert client.protocol_version in types.version.HANDSHAKE_PROTOCOL_VERSIONS
                assert (await client.call_tool("echo", {"text": "hi"})).structured_content == {"result": "hi"}


async def test_unknown_route_is_404_jsonrpc_or_plain(tmp_path: Path) -> None:
    async with gateway_over(tmp_path, 1) as (port, _), route_client(port) as http:
        with anyio.fail_after(10):
            with pytest.raises(BaseException) as raised:
                async with (
                    streamable_http_client(f"https://nope.{DOMAIN}/mcp", http_client=http) as (read, write),
                    ClientSession(read, write) as s,
                ):
                    await s.initialize()
            error = find_exception(raised.value, MCPError)
            assert error is not None and "no route for host" in error.message
            plain = await http.get(f"https://nope.{DOMAIN}/")
            assert plain.status_code == 404 and plain.headers["content-type"].startswith("text/plain")
            foreign = await http.get("https://crm.other-domain.example/mcp")
            assert foreign.status_code == 404  # the route name only counts under the tunnel's domain


@pytest.mark.parametrize(
    ("content", "headers", "status", "code"),
    [
        (b"\x00garbage", {"content-type": "application/json"}, 400, types.PARSE_ERROR),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"secret_dump"}}',
            {"content-type": "application/json"},
            400,
            types.PARSE_ERROR,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            {"content-type": "text/plain"},
            415,
            types.INVALID_REQUEST,
        ),
        (
            b'{"jsonrpc":"1.0","id":1,"method":"tools/list"}',
            {"content-type": "application/json"},
            400,
            -32600,
        ),
    ],
)
async def test_garbage_is_refused_before_the_upstream(
    tmp_path: Path, content: bytes, headers: dict[str, str], status: int, code: int
) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, gateway_over(tmp_path, up) as (port, _), route_client(port) as http:
        with anyio.fail_after(10):
            response = await http.post(f"https://crm.{DOMAIN}/mcp", content=content, headers=headers)
            assert response.status_code == status
            assert response.json()["error"]["code"] == code
            assert upstream.bodies == []  # fail closed: nothing reached the upstream
            put = await http.put(f"https://crm.{DOMAIN}/mcp", content=b"{}", headers=headers)
            assert put.status_code == 405 and upstream.bodies == []
            ok = await http.get(f"https://crm.{DOMAIN}/mcp", headers={"accept": "text/event-stream"})
            assert ok.status_code == 400 and len(upstream.bodies) == 1  # positive control: GET is relayed


async def test_oversized_request_is_refused(tmp_path: Path) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, gateway_over(tmp_path, up) as (port, _), route_client(port) as http:
        big = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x" * (5 * 1024 * 1024)}},
            }
        )
        with anyio.fail_after(10):
            response = await http.post(
                f"https://crm.{DOMAIN}/mcp", content=big, headers={"content-type": "application/json"}
            )
    assert response.status_code == 413 and upstream.bodies == []


async def test_upstream_down_is_a_clear_502(tmp_path: Path) -> None:
    async with serve(make_app()) as up:
        pass  # the port is closed again
    async with gateway_over(tmp_path, up) as (port, _), route_client(port) as http:
        with anyio.fail_after(10):
            response = await http.post(
                f"https://crm.{DOMAIN}/mcp",
                content=b'{"jsonrpc":"2.0","id":7,"method":"tools/list"}',
                headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
            )
    assert response.status_code == 502
    assert response.json()["id"] == 7 and "unreachable" in response.json()["error"]["message"]


async def test_large_tool_result_streams_intact(tmp_path: Path) -> None:
    upstream = Upstream()
    async with serve(upstream) as up, gateway_over(tmp_path, up) as (port, _), route_client(port) as http:
        size = 10 * 1024 * 1024
        async with (
            streamable_http_client(
                f"https://crm.{DOMAIN}/mcp", http_client=http, max_sse_event_size=None
            ) as (r, w),
            ClientSession(r, w) as s,
        ):
            with anyio.fail_after(20):
                await s.initialize()
                result = await s.call_tool("big", {"size": size})
    assert result.structured_content is not None
    data = result.structured_content["result"]
    expected = (BLOCK * (size // len(BLOCK) + 1))[:size]
    assert (
        len(data) == size
        and hashlib.sha256(data.encode()).digest() == hashlib.sha256(expected.encode()).digest()
    )


def test_route_for_host() -> None:
    config = gateway_config(
        Path("/tmp"), routes={"crm": http_route("crm", 1)}, stdio={"wiki": stdio_route("wiki")}
    )
    gw = Gateway(config)
    assert gw.route_for_host(f"crm.{DOMAIN}") == "crm"
    assert gw.route_for_host(f"CRM.{DOMAIN.upper()}:443") == "crm"
    assert gw.route_for_host(f"wiki.{DOMAIN}.") == "wiki"
    assert gw.route_for_host(f"other.{DOMAIN}") is None
    assert gw.route_for_host("crm.evil.example") is None
    assert gw.route_for_host(DOMAIN) is None
    assert gw.route_for_host("127.0.0.1:8000") is None
    assert gw.route_for_host("[::1]:8000") is None


async def test_websocket_scope_is_closed(tmp_path: Path) -> None:
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "websocket.connect"}

    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 1)})
    await Gateway(config)({"type": "websocket", "headers": []}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]


async def test_raw_status_without_running_is_503(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 1)})
    app = Gateway(config)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport) as http:
        response = await http.post(
            f"http://crm.{DOMAIN}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
        )
    assert response.status_code == 503
