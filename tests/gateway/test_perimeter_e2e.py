"""Through the real control plane: `inwall server` in-process, an `inwall gateway` subprocess, the SDKs.

The control plane has no policy, so it allows every tool; the gateway pins the
control plane's public key, requires its signed identity on every call,
enforces its own Cedar policy and redacts results. What the perimeter decides
holds, whatever the control plane allowed.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic import AsyncAnthropic
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

from inwall.audit import verify_file
from inwall.gateway.certs import create_certificates
from inwall.governance import DENIAL_TEXT
from tests.gateway.test_e2e import gateway_process
from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, run_turn

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

API_KEY = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
CARD = "5555-5555-5555-4444"
EMAIL = "billing@acme-corp.example"

PERIMETER = """
@id("crm-for-everyone-signed")
permit (principal, action, resource) when { resource.mcp_server == "crm" };

@id("never-wipe")
forbid (principal, action, resource == Inwall::Tool::"wipe");

@id("no-anonymous")
forbid (principal, action, resource) when { principal.kind == "anonymous" };
"""


class RecordingUpstream:
    """The private MCP server, recording every request body and header name it receives."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.bodies: list[bytes] = []
        self.header_names: set[bytes] = set()
        mcp = MCPServer("crm", log_level="WARNING")

        @mcp.tool()
        def customer_record(customer: str) -> str:
            self.calls.append("customer_record")
            return f"{customer}: contact {EMAIL}, card {CARD}, deploy token {API_KEY}"

        @mcp.tool()
        def wipe(table: str) -> str:
            self.calls.append("wipe")
            return f"wiped {table}"

        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.app = mcp.streamable_http_app(transport_security=security)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.header_names.update(k.lower() for k, _ in scope["headers"])

            async def recording_receive() -> Any:
                message = await receive()
                self.bodies.append(message.get("body", b""))
                return message

            await self.app(scope, recording_receive, send)
            return
        await self.app(scope, receive, send)


def gateway_toml(path: Path, certs: Any, port: int, *, public_key: Path, tunnel_id: str) -> Path:
    (path.parent / "perimeter.cedar").write_text(PERIMETER)
    path.write_text(
        f"""
[gateway]
connections = 1
audit_log = "{path.parent / "gateway-audit.jsonl"}"
drain_timeout_s = 5
[tls]
cert_file = "{certs.server_cert}"
key_file = "{certs.server_key}"
[routes.crm]
upstream = "http://127.0.0.1:{port}"
[identity]
public_key_file = "{public_key}"
tunnel_id = "{tunnel_id}"
required = true
[policy]
file = "perimeter.cedar"
[redact]
builtins = ["api_keys", "card_numbers", "emails"]
"""
    )
    return path


async def test_the_perimeter_holds_what_the_control_plane_allows(tmp_path: Path) -> None:
    upstream = RecordingUpstream()
    data = tmp_path / "data"
    async with (
        serve_asgi(upstream) as crm_url,
        running_server(fast_settings(data, tunnel_connect_wait_s=1.0)) as server,
    ):
        client: AsyncAnthropic
        async with server.client() as client:
            tunnel = await client.beta.tunnels.create(display_name="crm-network")
            certs = create_certificates(tunnel.domain, tmp_path / "certs")
            await client.beta.tunnels.certificates.create(
                tunnel.id, ca_certificate_pem=certs.ca_cert.read_text()
            )
            token = (await client.beta.tunnels.reveal_token(tunnel.id)).tunnel_token
            config = gateway_toml(
                tmp_path / "gateway.toml",
                certs,
                int(crm_url.rsplit(":", 1)[1]),
                public_key=data / "identity_ed25519.pub.pem",  # pinned from the control plane's data dir
                tunnel_id=tunnel.id,
            )
            env = await client.beta.environments.create(name="t", config={"type": "self_hosted"})
            always = {"permission_policy": {"type": "always_allow"}}
            agent = await client.beta.agents.create(
                name="perimeter",
                model="inwall-scripted",
                mcp_servers=[{"type": "url", "name": "crm", "url": f"https://crm.{tunnel.domain}/mcp"}],
                tools=[{"type": "mcp_toolset", "mcp_server_name": "crm", "default_config": always}],
            )
            session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)

            async with gateway_process(config, server.bound.port, token=token) as gw:
                with anyio.fail_after(20):
                    await gw.up.wait()
                lines = [
                    call("mcp__crm__customer_record", {"customer": "acme"}),
                    call("mcp__crm__wipe", {"table": "customers"}),
                ]
                events, answer = await run_turn(client, session.id, lines)
                gw.process.send_signal(signal.SIGTERM)

    record, wipe = answer.splitlines()
    # Signed (required = true) and allowed: the call went through, its secrets did not.
    assert record.startswith("mcp__crm__customer_record [") and "acme: contact [REDACTED:emails]" in record
    assert "[REDACTED:card_numbers]" in record and "[REDACTED:api_keys]" in record
    # Allowed by the control plane, denied by the gateway's own policy: it stays denied, and the
    # model learns only that it was denied.
    assert wipe == f"mcp__crm__wipe [{len(DENIAL_TEXT)} chars]: {DENIAL_TEXT}"
    assert upstream.calls == ["customer_record"]  # wipe never reached the MCP server
    everything = json.dumps([e.model_dump(mode="json") for e in events])
    for secret in (API_KEY, CARD, EMAIL):
        assert secret not in everything  # not in the session's events, so never in the model's context

    # The MCP server never saw an identity token, in the body or as a header.
    seen = b"".join(upstream.bodies)
    assert b"customer_record" in seen and b"inwall/identity" not in seen and b"eyJ" not in seen
    assert b"x-inwall-identity" not in upstream.header_names

    audit_path = tmp_path / "gateway-audit.jsonl"
    text = audit_path.read_text()
    for secret in (API_KEY, CARD, EMAIL):
        assert secret not in text
    assert "eyJ" not in text  # nor any token
    start = next(json.loads(line) for line in text.splitlines() if '"gateway.start"' in line)
    assert start["perimeter"] == {
        "identity": "required on every tools/call",
        "policy": str(tmp_path / "perimeter.cedar"),
        "redact": "api_keys, card_numbers, emails",
    }
    calls = [json.loads(line) for line in text.splitlines() if '"tools/call"' in line]
    by_tool = {c["mcp"][0]["tool"]: c for c in calls}
    signed = by_tool["customer_record"]
    assert signed["outcome"] == "forwarded" and signed["caller"] == "admin"
    assert signed["identity"][0]["outcome"] == "verified" and signed["identity"][0]["tool_use_id"]
    assert {r["pattern"]: r["count"] for r in signed["redactions"]} == {
        "api_keys": 2,
        "card_numbers": 2,
        "emails": 2,
    }
    denied = by_tool["wipe"]
    assert denied["outcome"] == "denied" and denied["tools"][0]["rule"] == "cedar"
    assert "never-wipe" in denied["tools"][0]["reason"] and denied["caller"] == "admin"
    assert verify_file(audit_path).ok
