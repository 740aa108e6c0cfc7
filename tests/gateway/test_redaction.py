"""Secrets in tool results are redacted at the perimeter; the audit log counts them and never holds them.

The upstream is a real MCPServer under uvicorn and the client the official
SDK's, so the redacted result also has to survive the client's own checks
(``structuredContent`` against the tool's ``outputSchema``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import ClientSession
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field

from inwall.audit import AuditLog, verify_file
from inwall.gateway._sse import SseParser, encode_event
from inwall.gateway.app import Gateway
from inwall.gateway.identity import IDENTITY_META_KEY
from inwall.gateway.mcp_policy import PerimeterPolicy, ToolListDecider
from inwall.governance import Redactor
from tests.gateway.conftest import (
    DOMAIN,
    Signer,
    gateway_config,
    http_route,
    route_client,
    serve,
    stdio_route,
)

pytestmark = pytest.mark.anyio

API_KEY = "sk-ant-api03-" + "Zq8vR2xLm4Tn6Wp1Ks3Hd5Jf7Gb9Nc0Ye"
CARD = "4111 1111 1111 1111"
EMAIL = "ceo@acme-corp.example"
SECRETS = (API_KEY, CARD, EMAIL, "4111111111111111")
RECORD = f"customer acme: contact {EMAIL}, card {CARD}, billing key {API_KEY}; tier gold"


class Card(BaseModel):
    holder: str
    number: str = Field(pattern=r"^[0-9 ]+$")  # a schema a redacted string cannot satisfy


def make_server() -> MCPServer:
    mcp = MCPServer("crm", log_level="WARNING")

    @mcp.tool()
    def customer_record(customer: str) -> str:
        return RECORD

    @mcp.tool()
    def card_on_file(customer: str) -> Card:
        return Card(holder=f"{customer} ({EMAIL})", number=CARD)

    @mcp.tool()
    def plain(customer: str) -> str:
        return f"{customer}: nothing to hide"

    return mcp


def app(**kwargs: Any) -> Any:
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return make_server().streamable_http_app(transport_security=security, **kwargs)


@asynccontextmanager
async def world(tmp_path: Path, **app_kwargs: Any) -> AsyncIterator[tuple[int, Path]]:
    audit_path = tmp_path / "gateway-audit.jsonl"
    async with serve(app(**app_kwargs)) as up:
        config = gateway_config(
            tmp_path,
            routes={"crm": http_route("crm", up), "raw": http_route("raw", up, redact=False)},
            redactor=Redactor(),
        )
        with AuditLog(audit_path) as audit:
            async with serve(Gateway(config, audit=audit)) as port:
                yield port, audit_path


@asynccontextmanager
async def session(port: int, route: str) -> AsyncIterator[ClientSession]:
    async with (
        route_client(port) as http,
        streamable_http_client(f"https://{route}.{DOMAIN}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as s,
    ):
        await s.initialize()
        yield s


def counts(record: dict[str, Any]) -> dict[str, int]:
    return {entry["pattern"]: entry["count"] for entry in record["redactions"]}


def text_of(result: types.CallToolResult) -> str:
    return "\n".join(b.text for b in result.content if isinstance(b, types.TextContent))


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_planted_secrets_are_redacted_before_they_reach_the_client(
    tmp_path: Path, json_response: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="inwall")
    async with world(tmp_path, json_response=json_response) as (port, audit_path):
        with anyio.fail_after(15):
            async with session(port, "raw") as s:  # positive control: the upstream really leaks them
                raw = await s.call_tool("customer_record", {"customer": "acme"})
                assert text_of(raw) == RECORD
            async with session(port, "crm") as s:
                await s.list_tools()  # the gateway learns the output schemas it relays
                result = await s.call_tool("customer_record", {"customer": "acme"})
                card = await s.call_tool("card_on_file", {"customer": "acme"})
                plain = await s.call_tool("plain", {"customer": "acme"})

    text = text_of(result)
    assert not result.is_error
    assert text == (
        "customer acme: contact [REDACTED:emails], card [REDACTED:card_numbers], "
        "billing key [REDACTED:api_keys]; tier gold"
    )
    assert result.structured_content == {"result": text}  # redacted alike, so the client's check passed
    # card_on_file's schema demands digits: the redacted value could not satisfy it, so the
    # gateway withheld structuredContent and flagged the result rather than break the client.
    assert card.is_error and card.structured_content is None
    assert "[REDACTED:card_numbers]" in text_of(card) and "withheld" in text_of(card)
    assert not plain.is_error and plain.structured_content == {"result": "acme: nothing to hide"}
    for secret in SECRETS:
        assert secret not in text + text_of(card)

    log_text = audit_path.read_text()
    for secret in SECRETS:
        assert secret not in log_text  # the audit log records that it happened, never what
        assert not any(secret in r.getMessage() for r in caplog.records if r.name.startswith("inwall"))
    records = [json.loads(line) for line in log_text.splitlines()]
    calls = {
        r["mcp"][0]["tool"]: r
        for r in records
        if r.get("route") == "crm" and r.get("mcp") and r["mcp"][0].get("method") == "tools/call"
    }
    # text content and structuredContent each carried one of each: two replacements per pattern
    assert counts(calls["customer_record"]) == {"api_keys": 2, "card_numbers": 2, "emails": 2}
    assert counts(calls["card_on_file"]) == {"card_numbers": 2, "emails": 2}
    assert calls["card_on_file"]["structured_content_withheld"] == 1
    assert "redactions" not in calls["plain"]
    raw_call = next(r for r in records if r.get("route") == "raw" and r.get("mcp", [{}])[0].get("tool"))
    assert "redactions" not in raw_call  # redact = false on that route
    assert verify_file(audit_path).ok


async def test_a_modern_era_client_gets_redacted_results_too(tmp_path: Path) -> None:
    async with world(tmp_path) as (port, _), route_client(port) as http:
        client = Client(streamable_http_client(f"https://crm.{DOMAIN}/mcp", http_client=http), cache=None)
        with anyio.fail_after(15):
            async with client:
                assert client.protocol_version == "2026-07-28"
                result = await client.call_tool("customer_record", {"customer": "acme"})
    assert "[REDACTED:api_keys]" in text_of(result) and API_KEY not in text_of(result)
    assert result.structured_content == {"result": text_of(result)}


# -- the filter itself (sans-I/O) -----------------------------------------------------------------


def call_verdict(p: PerimeterPolicy, request_id: Any = 1) -> Any:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": "t"}}
    return p.check("crm", "POST", [("content-type", "application/json")], json.dumps(message).encode())


def policy() -> PerimeterPolicy:
    return PerimeterPolicy(ToolListDecider({}), redactor=Redactor(), redacted_routes={"crm"})


def test_only_routes_that_redact_parse_call_results() -> None:
    p = policy()
    headers = {"content-type": "application/json"}
    assert p.response_filter("crm", "POST", call_verdict(p), status=200, headers=headers).mode == "json"
    assert p.response_filter("other", "POST", call_verdict(p), status=200, headers=headers).mode == "pass"
    bare = PerimeterPolicy(ToolListDecider({}))
    assert bare.response_filter("crm", "POST", call_verdict(bare), status=200, headers=headers).mode == "pass"


def test_what_is_redacted_and_what_is_left_alone() -> None:
    p = policy()
    f = p.response_filter(
        "crm", "POST", call_verdict(p), status=200, headers={"content-type": "application/json"}
    )
    result: dict[str, Any] = {
        "content": [
            {"type": "text", "text": f"mail {EMAIL}"},
            {"type": "image", "data": "aGk=", "mimeType": "image/png"},
            {"type": "resource", "resource": {"uri": "file:///k", "text": f"key {API_KEY}"}},
            {"type": "resource", "resource": {"uri": "file:///b", "blob": "aGk="}},
        ],
        "structuredContent": {"rows": [{EMAIL: EMAIL, "n": 4, "ok": True}]},
        "isError": False,
    }
    out = json.loads(f.filter_json(json.dumps({"jsonrpc": "2.0", "id": 1, "result": result}).encode()))[
        "result"
    ]
    assert out["content"][0] == {"type": "text", "text": "mail [REDACTED:emails]"}
    assert out["content"][1] == result["content"][1] and out["content"][3] == result["content"][3]
    assert out["content"][2]["resource"] == {"uri": "file:///k", "text": "key [REDACTED:api_keys]"}
    # string values are redacted, keys and other types kept: the shape stays the same
    assert out["structuredContent"] == {"rows": [{EMAIL: "[REDACTED:emails]", "n": 4, "ok": True}]}
    assert dict(f.redactions) == {"emails": 2, "api_keys": 1}
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": f"failed for {EMAIL}"}}
    assert EMAIL not in f.filter_json(json.dumps(error).encode()).decode()
    untouched = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}]}}
    )
    assert f.filter_json(untouched.encode()) == untouched.encode()  # nothing matched: byte for byte


def test_sse_results_are_redacted_at_every_chunk_boundary() -> None:
    p = policy()
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": 1},
    }
    result = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": RECORD}]}}
    stream = encode_event(json.dumps(progress), id="e1") + encode_event(json.dumps(result), id="e2")
    for split in range(0, len(stream) + 1, 7):
        f = p.response_filter(
            "crm", "POST", call_verdict(p), status=200, headers={"content-type": "text/event-stream"}
        )
        out = f.feed(stream[:split]) + f.feed(stream[split:]) + f.end()
        events = SseParser().feed(out)
        assert events[0].raw == encode_event(json.dumps(progress), id="e1")  # untouched, byte for byte
        assert events[1].id == "e2" and events[1].data is not None
        text = json.loads(events[1].data)["result"]["content"][0]["text"]
        assert all(secret not in text for secret in SECRETS) and "[REDACTED:emails]" in text
        assert dict(f.redactions) == {"api_keys": 1, "card_numbers": 1, "emails": 1}


async def test_a_stdio_route_gets_the_signed_call_without_its_token_and_answers_redacted(
    tmp_path: Path, signer: Signer
) -> None:
    config = gateway_config(
        tmp_path,
        stdio={"wiki": stdio_route("wiki")},
        identity=signer.identity_config(required=True),
        redactor=Redactor(),
    )
    arguments = {"text": f"page owner {EMAIL}"}
    async with serve(Gateway(config)) as port, session(port, "wiki") as s:
        with anyio.fail_after(15):
            token = signer.token("echo", arguments)
            result = await s.call_tool("echo", arguments, meta={IDENTITY_META_KEY: token})
            meta = {IDENTITY_META_KEY: signer.token("meta_dump", {}), "acme/trace": "t1"}
            seen = await s.call_tool("meta_dump", {}, meta=meta)
    # the child echoed its input: redacted on the way out (the call itself was verified and forwarded)
    assert text_of(result) == "page owner [REDACTED:emails]"
    assert result.structured_content == {"result": "page owner [REDACTED:emails]"}
    # the child got the call's other _meta, never the token
    assert seen.structured_content == {"acme/trace": "t1"}
