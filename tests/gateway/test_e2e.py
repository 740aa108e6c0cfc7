"""End to end: mcp client → TN's edge (Starlette, uvicorn) → tunnel → `inwall gateway` → MCP servers.

The gateway runs as a real subprocess (`inwall gateway --config ...`), so killing
it is a real SIGKILL and a drain is a real SIGTERM. The MCP servers are reachable
by the client only through the tunnel: the client's transport is the edge's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2
import mcp_types as types
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from inwall.audit import AuditLog, verify_file
from inwall.gateway import Decision, Gateway, GatewayProgram, load_config
from inwall.gateway.certs import create_certificates
from inwall.tunnel import TunnelAuth, TunnelEdge
from tests.gateway.conftest import STDIO_SERVER, find_exception, serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DOMAIN = "tnl-e2e.inwall.example"
TUNNEL_ID = "tnl_e2e"
TOKEN = "tunnel-token-e2e-do-not-log"


@dataclass
class Directory:
    """A real in-memory TunnelDirectory (the lead's is backed by the database)."""

    ca_pems: list[str]
    tokens: dict[str, TunnelAuth] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens[TOKEN] = TunnelAuth(tunnel_id=TUNNEL_ID, domain=DOMAIN, token_id="tok_1")

    async def authenticate(self, token: str) -> TunnelAuth | None:
        return self.tokens.get(token)

    async def trusted_ca_pems(self, tunnel_id: str) -> list[str]:
        return list(self.ca_pems)

    async def tunnel_for_host(self, host: str) -> TunnelAuth | None:
        return self.tokens[TOKEN] if host == DOMAIN or host.endswith("." + DOMAIN) else None


class Upstream:
    """The private HTTP MCP server; its `slow` tool tells the test when a call is in flight."""

    def __init__(self) -> None:
        self.in_flight = anyio.Event()
        mcp = MCPServer("crm", log_level="WARNING")

        @mcp.tool()
        def lookup(customer: str) -> str:
            return f"{customer}: gold tier"

        @mcp.tool()
        def export_all() -> str:
            return "EVERY-ROW"

        @mcp.tool()
        async def slow(seconds: float) -> str:
            self.in_flight.set()
            await anyio.sleep(seconds)
            return "finished"

        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.app = mcp.streamable_http_app(transport_security=security)


class GatewayProcess:
    """`inwall gateway` as a child process; `up` fires when it logs a live tunnel."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.up = anyio.Event()

    async def pump(self) -> None:
        assert self.process.stderr is not None
        buffer = b""
        async for chunk in self.process.stderr:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                self.lines.append(text)
                if "tunnel up" in text:
                    self.up.set()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def gateway_process(config: Path, edge_port: int, token: str = TOKEN) -> AsyncIterator[GatewayProcess]:
    env = {**os.environ, "INWALL_TUNNEL_TOKEN": token}
    argv = [sys.executable, "-m", "inwall.cli.main", "gateway", "--config", str(config)]
    argv += ["--base-url", f"http://127.0.0.1:{edge_port}", "--log-level", "INFO"]
    process = await anyio.open_process(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    gateway = GatewayProcess(process)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(gateway.pump)
            yield gateway
            with anyio.fail_after(10):
                await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()


@dataclass
class World:
    tmp: Path
    edge: TunnelEdge
    edge_port: int
    config: Path
    upstream: Upstream


@asynccontextmanager
async def world(tmp_path: Path) -> AsyncIterator[World]:
    certs = create_certificates(DOMAIN, tmp_path / "certs")
    edge = TunnelEdge(
        Directory([certs.ca_cert.read_text()]), connect_wait_s=0.5, ping_interval_s=0.5, dead_after_s=2
    )
    upstream = Upstream()
    async with serve(upstream.app) as upstream_port, anyio.create_task_group() as tg:
        await tg.start(edge.run)
        edge_app = Starlette(routes=[WebSocketRoute("/v1/tunnels/connect", edge.websocket_endpoint)])
        async with serve(edge_app) as edge_port:
            config = tmp_path / "gateway.toml"
            config.write_text(
                f"""
[gateway]
connections = 2
audit_log = "gateway-audit.jsonl"
drain_timeout_s = 10
[tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
[routes.crm]
upstream = "http://127.0.0.1:{upstream_port}"
deny_tools = ["export_all"]
[stdio.wiki]
command = {[*STDIO_SERVER]!r}
allow_tools = ["echo", "add_tool"]
""".replace("'", '"')
            )
            yield World(tmp_path, edge, edge_port, config, upstream)
        tg.cancel_scope.cancel()


@asynccontextmanager
async def mcp_session(edge: TunnelEdge, route: str, **kwargs: Any) -> AsyncIterator[ClientSession]:
    async with (
        httpx2.AsyncClient(transport=edge.transport(), timeout=httpx2.Timeout(30, read=300)) as http,
        streamable_http_client(f"https://{route}.{DOMAIN}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, **kwargs) as session,
    ):
        await session.initialize()
        yield session


async def test_calls_through_the_tunnel_survive_a_gateway_restart(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        async with gateway_process(w.config, w.edge_port) as gw:
            with anyio.fail_after(15):
                await gw.up.wait()
            changed = anyio.Event()

            async def on_message(message: Any) -> None:
                if isinstance(message, types.ToolListChangedNotification):
                    changed.set()

            with anyio.fail_after(20):
                async with mcp_session(w.edge, "crm") as crm:
                    assert {t.name for t in (await crm.list_tools()).tools} == {"lookup", "slow"}
                    result = await crm.call_tool("lookup", {"customer": "acme"})
                    assert result.structured_content == {"result": "acme: gold tier"}
                    with pytest.raises(MCPError) as denied:
                        await crm.call_tool("export_all", {})
                    assert denied.value.code == types.INVALID_PARAMS
                async with mcp_session(w.edge, "wiki", message_handler=on_message) as wiki:
                    assert {t.name for t in (await wiki.list_tools()).tools} == {"echo", "add_tool"}
                    await wiki.call_tool("add_tool", {"name": "fresh"})
                    await changed.wait()

            # kill the gateway in the middle of a session: calls fail clearly, they do not hang
            with anyio.fail_after(20):
                with pytest.raises(BaseException) as raised:
                    async with mcp_session(w.edge, "crm") as crm:
                        await crm.call_tool("lookup", {"customer": "before"})
                        gw.process.send_signal(signal.SIGKILL)
                        await gw.process.wait()
                        await crm.call_tool("lookup", {"customer": "during"})
            error = find_exception(raised.value, httpx2.TransportError)
            assert error is not None and "no connected gateway" in str(error)
        assert TOKEN not in gw.log  # the token never reaches the logs

        async with gateway_process(w.config, w.edge_port) as gw2:
            with anyio.fail_after(15):
                await gw2.up.wait()
            with anyio.fail_after(20):
                async with mcp_session(w.edge, "crm") as crm:
                    result = await crm.call_tool("lookup", {"customer": "after"})
                    assert result.structured_content == {"result": "after: gold tier"}
                async with mcp_session(w.edge, "wiki") as wiki:
                    assert (await wiki.call_tool("echo", {"text": "back"})).structured_content == {
                        "result": "back"
                    }
            gw2.process.send_signal(signal.SIGTERM)
        assert gw2.process.returncode == 0
    report = verify_file(tmp_path / "gateway-audit.jsonl")
    assert report.ok and report.records > 5


async def test_sigterm_drains_an_in_flight_call_then_exits_zero(tmp_path: Path) -> None:
    async with world(tmp_path) as w, gateway_process(w.config, w.edge_port) as gw:
        with anyio.fail_after(15):
            await gw.up.wait()
        results: list[Any] = []
        try:
            with anyio.fail_after(20):
                async with mcp_session(w.edge, "crm") as crm, anyio.create_task_group() as tg:
                    await crm.list_tools()  # so call_tool needs no follow-up tools/list while draining

                    async def call() -> None:
                        results.append(await crm.call_tool("slow", {"seconds": 1.0}))

                    tg.start_soon(call)
                    await w.upstream.in_flight.wait()
                    gw.process.send_signal(signal.SIGTERM)
        except BaseExceptionGroup as group:
            # once drained the gateway is gone: the client's GET stream / DELETE may fail after the result
            assert results and find_exception(group, httpx2.TransportError) is not None
        assert results[0].structured_content == {"result": "finished"}  # the in-flight call was drained
    assert gw.process.returncode == 0
    assert "draining" in gw.log


async def test_wrong_token_stops_with_a_clear_message(tmp_path: Path) -> None:
    async with world(tmp_path) as w, gateway_process(w.config, w.edge_port, token="wrong-token-value") as gw:
        with anyio.fail_after(15):
            await gw.process.wait()
    assert gw.process.returncode == 3
    assert "refused the tunnel token" in gw.log and "wrong-token-value" not in gw.log


class OnlyLookupForAcme:
    """A custom Decider (the Cedar / signed-identity seam): arguments and identity are in reach."""

    def decide(self, route: str, tool_name: str, arguments: Any, identity_claims: Any) -> Decision:
        if tool_name != "lookup":
            return Decision.deny("only lookup is exposed", rule="custom")
        if arguments is not None and arguments.get("customer") != "acme":
            return Decision.deny("only acme may be looked up", rule="custom")
        return Decision.allow(rule="custom")


async def test_in_process_program_as_the_demo_starts_it(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        config = load_config(w.config, check_files=True)
        with AuditLog(tmp_path / "inproc-audit.jsonl") as audit:
            gateway = Gateway(config, decider=OnlyLookupForAcme(), audit=audit)
            program = GatewayProgram(
                config, base_url=f"http://127.0.0.1:{w.edge_port}", token=TOKEN, gateway=gateway, audit=audit
            )
            async with anyio.create_task_group() as tg:
                await tg.start(program.run)
                with anyio.fail_after(20):
                    await program.wait_connected(config.connections)
                    async with mcp_session(w.edge, "crm") as crm:
                        assert [t.name for t in (await crm.list_tools()).tools] == ["lookup"]
                        ok = await crm.call_tool("lookup", {"customer": "acme"})
                        assert ok.structured_content == {"result": "acme: gold tier"}
                        with pytest.raises(MCPError, match="not allowed"):
                            await crm.call_tool("lookup", {"customer": "globex"})
                program.stop()
        assert program.connected == 0
    assert verify_file(tmp_path / "inproc-audit.jsonl").ok
