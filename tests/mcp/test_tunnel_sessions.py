"""Sessions calling private MCP servers through a tunnel: the SDK's tunnels API, a real `inwall gateway`.

The control plane reaches the MCP servers only by their tunnel hostnames
(``crm.<tunnel domain>``), which route through the tunnel and nowhere else;
the gateway dials out to the control plane and relays to an HTTP MCP server
on loopback and to a stdio MCP server it starts itself.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic import AsyncAnthropic

from inwall.audit import verify_file
from inwall.gateway.certs import create_certificates
from tests.gateway.conftest import STDIO_SERVER
from tests.gateway.test_e2e import gateway_process
from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, run_turn
from tests.mcp.servers import CrmState, make_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _tunnel(client: AsyncAnthropic, certs_dir: Path) -> tuple[str, str, Any]:
    tunnel = await client.beta.tunnels.create(display_name="crm-network")
    assert tunnel.id.startswith("tnl_") and tunnel.domain.endswith(".tunnel.inwall.internal")
    certs = create_certificates(tunnel.domain, certs_dir)
    cert = await client.beta.tunnels.certificates.create(
        tunnel.id, ca_certificate_pem=certs.ca_cert.read_text()
    )
    assert len(cert.fingerprint) == 64
    token = await client.beta.tunnels.reveal_token(tunnel.id)
    return tunnel.domain, token.tunnel_token, certs


def _gateway_config(path: Path, certs: Any, crm_port: int) -> Path:
    path.write_text(
        f"""
[gateway]
connections = 2
audit_log = "{path.parent / "gateway-audit.jsonl"}"
drain_timeout_s = 5
[tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
[routes.crm]
upstream = "http://127.0.0.1:{crm_port}"
deny_tools = ["t4"]
[stdio.wiki]
command = {[*STDIO_SERVER]!r}
allow_tools = ["echo"]
""".replace("'", '"')
    )
    return path


def _agent(domain: str) -> dict[str, Any]:
    always = {"permission_policy": {"type": "always_allow"}}
    return {
        "name": "tunnelled",
        "model": "inwall-scripted",
        "mcp_servers": [
            {"type": "url", "name": "crm", "url": f"https://crm.{domain}/mcp"},
            {"type": "url", "name": "wiki", "url": f"https://wiki.{domain}/mcp"},
        ],
        "tools": [
            {"type": "mcp_toolset", "mcp_server_name": "crm", "default_config": always},
            {"type": "mcp_toolset", "mcp_server_name": "wiki", "default_config": always},
        ],
    }


async def test_private_mcp_servers_through_a_gateway_that_restarts(tmp_path: Path) -> None:
    state = CrmState()
    settings = fast_settings(tmp_path / "data", tunnel_connect_wait_s=1.0)
    async with (
        serve_asgi(make_app(state)) as crm_url,
        running_server(settings) as server,
        server.client() as client,
    ):
        domain, token, certs = await _tunnel(client, tmp_path / "certs")
        config = _gateway_config(tmp_path / "gateway.toml", certs, int(crm_url.rsplit(":", 1)[1]))
        env = await client.beta.environments.create(name="t", config={"type": "self_hosted"})
        agent = await client.beta.agents.create(**_agent(domain))
        session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
        lines = [call("mcp__crm__lookup", {"id": 3}), call("mcp__wiki__echo", {"text": "through the tunnel"})]

        async with gateway_process(config, server.bound.port, token=token) as gw:
            with anyio.fail_after(20):
                await gw.up.wait()
            events, answer = await run_turn(client, session.id, [*lines, call("mcp__crm__t4")])
            out = answer.splitlines()
            assert "ACME Corp" in out[0]
            assert out[1] == "mcp__wiki__echo [18 chars]: through the tunnel"
            # The perimeter's own allowlist: t4 is denied by the gateway, never reaches the server.
            assert out[2].startswith("mcp__crm__t4 [") and "t4 ok" not in out[2]
            assert ("t4", {}) not in state.calls
            # wiki's allowlist hides everything but echo from the model.
            assert "mcp__wiki__secret_dump" not in str([e.model_dump() for e in events])
            gw.process.send_signal(signal.SIGKILL)

        # Outage: the call fails within seconds with a clear error, it does not hang.
        with anyio.fail_after(20):
            events, answer = await run_turn(client, session.id, [call("mcp__crm__lookup", {"id": 4})])
        errors = [e for e in events if e.type == "session.error"]
        assert errors, answer
        assert errors[0].error.type == "mcp_connection_failed_error"
        assert "no connected gateway" in errors[0].error.message
        assert "not available" in answer or "failed" in answer

        # The gateway comes back: the same session carries on.
        async with gateway_process(config, server.bound.port, token=token) as gw:
            with anyio.fail_after(20):
                await gw.up.wait()
            _, answer = await run_turn(client, session.id, lines)
            assert "ACME Corp" in answer.splitlines()[0]
            assert answer.splitlines()[1] == "mcp__wiki__echo [18 chars]: through the tunnel"
            gw.process.send_signal(signal.SIGTERM)
    assert verify_file(tmp_path / "gateway-audit.jsonl").ok


async def test_wrong_and_rotated_tokens_are_refused(tmp_path: Path) -> None:
    state = CrmState()
    async with (
        serve_asgi(make_app(state)) as crm_url,
        running_server(fast_settings(tmp_path / "data")) as server,
        server.client() as client,
    ):
        _domain, token, certs = await _tunnel(client, tmp_path / "certs")
        config = _gateway_config(tmp_path / "gateway.toml", certs, int(crm_url.rsplit(":", 1)[1]))
        async with gateway_process(config, server.bound.port, token="iwtt_wrong") as gw:
            with anyio.fail_after(20):
                code = await gw.process.wait()
            assert code == 3 and "iwtt_wrong" not in gw.log
        tunnel_id = (await client.beta.tunnels.list()).data[0].id
        rotated = await client.beta.tunnels.rotate_token(tunnel_id, reason="test")
        assert rotated.tunnel_token != token
        async with gateway_process(config, server.bound.port, token=token) as gw:
            with anyio.fail_after(20):
                assert await gw.process.wait() == 3
        async with gateway_process(config, server.bound.port, token=rotated.tunnel_token) as gw:
            with anyio.fail_after(20):
                await gw.up.wait()
            gw.process.send_signal(signal.SIGTERM)
