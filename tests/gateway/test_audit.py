"""Every request leaves a hash-chained audit record that `inwall audit verify` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client

from inwall.audit import AuditLog
from inwall.cli.main import main
from inwall.gateway.app import Gateway
from tests.gateway.conftest import DOMAIN, gateway_config, http_route, route_client, serve, stdio_route
from tests.gateway.servers.http_server import make_app

pytestmark = pytest.mark.anyio

SECRET = "pa55word-in-an-argument"


async def test_audit_chain_records_every_outcome_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "gateway-audit.jsonl"
    async with serve(make_app()) as up:
        config = gateway_config(
            tmp_path,
            routes={"crm": http_route("crm", up, deny_tools=frozenset({"secret_dump"}))},
            stdio={"wiki": stdio_route("wiki")},
        )
        with AuditLog(log_path) as audit:
            async with serve(Gateway(config, audit=audit)) as port, route_client(port) as http:
                with anyio.fail_after(15):
                    async with (
                        streamable_http_client(f"https://crm.{DOMAIN}/mcp", http_client=http) as (
                            read,
                            write,
                        ),
                        ClientSession(read, write) as s,
                    ):
                        await s.initialize()
                        await s.list_tools()
                        await s.call_tool("echo", {"text": SECRET})
                        with pytest.raises(MCPError):
                            await s.call_tool("secret_dump", {"password": SECRET})
                    garbage = await http.post(
                        f"https://crm.{DOMAIN}/mcp",
                        content=b"{{",
                        headers={"content-type": "application/json"},
                    )
                    assert garbage.status_code == 400
                    assert (await http.get(f"https://nowhere.{DOMAIN}/")).status_code == 404

    text = log_path.read_text()
    assert SECRET not in text  # arguments are recorded as a digest, never as values
    records = [json.loads(line) for line in text.splitlines()]
    requests = [r for r in records if r["kind"] == "gateway.request"]
    outcomes = {r["outcome"] for r in requests}
    assert {"forwarded", "denied", "refused", "unknown_route"} <= outcomes
    calls = [r for r in requests if r.get("mcp") and r["mcp"][0].get("method") == "tools/call"]
    echo = next(r for r in calls if r["mcp"][0]["tool"] == "echo")
    assert echo["outcome"] == "forwarded" and echo["status"] == 200 and echo["route"] == "crm"
    assert echo["input_digests"][0].startswith("sha256:") and echo["bytes_in"] > 0 and echo["bytes_out"] > 0
    assert echo["duration_ms"] >= 0
    denied = next(r for r in calls if r["mcp"][0]["tool"] == "secret_dump")
    assert denied["outcome"] == "denied" and denied["tools"][0]["rule"] == "deny_tools"
    listing = next(r for r in requests if r.get("mcp") and r["mcp"][0].get("method") == "tools/list")
    assert listing["hidden_tools"] == 1

    assert main(["audit", "verify", str(log_path)]) == 0
    assert "OK" in capsys.readouterr().out
    # tamper evidence: flip one outcome and the chain no longer verifies
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if '"outcome":"denied"' in line)
    lines[index] = lines[index].replace('"outcome":"denied"', '"outcome":"forwarded"')
    log_path.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(log_path)]) == 1
