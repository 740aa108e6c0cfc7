"""The perimeter's own Cedar policy: upstream tool names, routes as mcp_server, opaque denials, hot reload."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest

from inwall.gateway.app import Gateway
from inwall.gateway.cedar import ANONYMOUS, AllOf, CedarDecider
from inwall.gateway.config import PolicyConfig
from inwall.gateway.identity import IDENTITY_META_KEY, LISTING_TOOL
from inwall.gateway.mcp_policy import Era, PerimeterPolicy, ToolListDecider, ToolRule
from inwall.governance import DENIAL_TEXT, PolicyEngine, PolicySet
from tests.gateway.conftest import ALICE, BOB, TUNNEL_ID, Signer, gateway_config, http_route

pytestmark = pytest.mark.anyio

POLICY = f"""
@id("engineering-on-crm")
permit (principal in Inwall::Role::"engineering", action, resource) when {{ resource.mcp_server == "crm" }};

@id("sales-lookup")
permit (principal in Inwall::Role::"sales", action, resource == Inwall::Tool::"lookup");

@id("anonymous-echo")
permit (principal, action, resource == Inwall::Tool::"echo") when {{ principal.kind == "anonymous" }};

@id("no-wipe")
forbid (principal, action, resource == Inwall::Tool::"wipe");

@id("no-bulk")
forbid (principal, action, resource) when {{ context.input has limit && context.input.limit > 100 }};

@id("this-tunnel-only")
forbid (principal, action, resource) unless {{ resource.tunnel == "{TUNNEL_ID}" && resource.kind == "mcp" }};
"""
JSON = [("content-type", "application/json")]


def engine(text: str = POLICY) -> PolicyEngine:
    return PolicyEngine(PolicySet.parse(text, source="perimeter.cedar"))


def decider(text: str = POLICY, **kwargs: Any) -> CedarDecider:
    e = engine(text)
    return CedarDecider(lambda: e, tunnel_id=kwargs.pop("tunnel_id", TUNNEL_ID), **kwargs)


def claims_of(signer: Signer, tool: str, arguments: Any, **kwargs: Any) -> dict[str, Any]:
    """The verified payload the gateway hands its Decider (what the control plane signed)."""
    token = signer.token(tool, arguments, **kwargs)
    caller = signer.caller_identity()
    if tool == LISTING_TOOL:
        verified = caller.verify_listing(token)
    else:
        verified = caller.verify_call(token, tool=tool, arguments=arguments)
    assert verified is not None
    return dict(verified.payload)


def test_tools_are_named_upstream_and_the_route_is_the_mcp_server(signer: Signer) -> None:
    d = decider()
    alice = claims_of(signer, "lookup", {})
    assert d.decide("crm", "lookup", {}, alice).allowed
    assert not d.decide("wiki", "lookup", {}, alice).allowed  # engineering may use crm only
    assert not d.decide("crm", "mcp__crm__lookup", {}, None).allowed  # the model's name means nothing here
    bob = claims_of(signer, "lookup", {}, identity=BOB)
    assert d.decide("wiki", "lookup", {}, bob).allowed and not d.decide("crm", "export", {}, bob).allowed


def test_forbids_hold_whoever_calls_and_constrain_arguments(signer: Signer) -> None:
    d = decider()
    alice = claims_of(signer, "wipe", {})
    wipe = d.decide("crm", "wipe", {}, alice)
    assert not wipe.allowed and wipe.opaque and wipe.rule == "cedar" and "no-wipe" in wipe.reason
    assert d.decide("crm", "lookup", {"limit": 10}, alice).allowed
    bulk = d.decide("crm", "lookup", {"limit": 1000}, alice)
    assert not bulk.allowed and "no-bulk" in bulk.reason
    # resource.tunnel is the [identity] tunnel id: a gateway configured for another tunnel denies.
    assert not decider(tunnel_id="").decide("crm", "lookup", {}, alice).allowed


def test_unsigned_calls_are_the_anonymous_principal() -> None:
    assert ANONYMOUS.user_id == "anonymous" and ANONYMOUS.kind == "anonymous" and ANONYMOUS.roles == ()
    d = decider()
    assert d.decide("crm", "echo", {}, None).allowed
    assert not d.decide("crm", "lookup", {}, None).allowed  # no permit for anonymous
    assert not d.decide("crm", "wipe", {}, None).allowed


def test_listing_hides_what_is_forbidden_whatever_the_input(signer: Signer) -> None:
    d = decider()
    alice = claims_of(signer, LISTING_TOOL, None)
    shown = [t for t in ("lookup", "wipe", "echo") if d.decide("crm", t, None, alice).allowed]
    assert shown == ["lookup", "echo"]  # lookup stays: only some inputs are forbidden
    bob = claims_of(signer, LISTING_TOOL, None, identity=BOB)
    assert [t for t in ("lookup", "wipe", "echo") if d.decide("crm", t, None, bob).allowed] == ["lookup"]
    # An unsigned listing (all the control plane sends today) is not filtered by Cedar ...
    assert all(d.decide("crm", t, None, None).allowed for t in ("lookup", "wipe", "echo"))
    # ... unless the gateway asks for it to be filtered as the anonymous principal.
    strict = decider(anonymous_listing="filtered")
    assert [t for t in ("lookup", "wipe", "echo") if strict.decide("crm", t, None, None).allowed] == ["echo"]


def test_a_cedar_denial_tells_the_caller_only_denial_text(signer: Signer) -> None:
    p = PerimeterPolicy(decider(), identity=signer.caller_identity(required=True))
    token = signer.token("wipe", {"table": "customers"})
    message = {
        "jsonrpc": "2.0",
        "id": "w1",
        "method": "tools/call",
        "params": {"name": "wipe", "arguments": {"table": "customers"}, "_meta": {IDENTITY_META_KEY: token}},
    }
    verdict = p.check("crm", "POST", JSON, json.dumps(message).encode())
    assert not verdict.forward and verdict.outcome == "denied"
    assert verdict.reply is not None and verdict.reply.status == 200
    reply = json.loads(verdict.reply.body)
    assert reply == {
        "jsonrpc": "2.0",
        "id": "w1",
        "result": {"content": [{"type": "text", "text": DENIAL_TEXT}], "isError": True},
    }
    ((tool, decision),) = verdict.decisions  # the audit log gets the why
    assert tool == "wipe" and "no-wipe" in decision.reason and verdict.identities[0].caller == "user_alice"
    # positive control: the same caller, an allowed tool
    allowed = dict(message, params={"name": "lookup", "_meta": {IDENTITY_META_KEY: signer.token("lookup")}})
    assert p.check("crm", "POST", JSON, json.dumps(allowed).encode()).forward


def test_modern_era_denial_is_a_200_result(signer: Signer) -> None:
    p = PerimeterPolicy(decider())
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "_meta": meta}}
    headers = [
        *JSON,
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "lookup"),
    ]
    verdict = p.check("crm", "POST", headers, json.dumps(message).encode())
    assert verdict.era is Era.MODERN and not verdict.forward
    assert verdict.reply is not None and verdict.reply.status == 200
    assert json.loads(verdict.reply.body)["result"]["isError"] is True


def test_lists_and_cedar_must_both_allow(signer: Signer) -> None:
    both = AllOf(ToolListDecider({"crm": ToolRule(deny=frozenset({"lookup"}))}), decider())
    alice = claims_of(signer, "lookup", {})
    listed = both.decide("crm", "lookup", {}, alice)
    assert not listed.allowed and listed.rule == "deny_tools" and not listed.opaque
    assert not both.decide("crm", "wipe", {}, alice).allowed
    ok = both.decide("crm", "export", {}, alice)
    assert ok.allowed and ok.rule == "default+cedar"


# -- hot reload -----------------------------------------------------------------------------------

ALL = '@id("all") permit (principal, action, resource);\n'
V1 = ALL + '@id("no-wipe") forbid (principal, action, resource == Inwall::Tool::"wipe");\n'
V2 = ALL + '@id("no-lookup") forbid (principal, action, resource == Inwall::Tool::"lookup");\n'
BROKEN = ALL.replace(";", "") + '@id("oops") forbid (principal, action, resource.nope);\n'


def perimeter_gateway(tmp_path: Path, *, interval: float = 3600) -> Gateway:
    (tmp_path / "perimeter.cedar").write_text(V1)
    policy = PolicyConfig(file=tmp_path / "perimeter.cedar", reload_interval_s=interval)
    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 9)}, policy=policy)
    return Gateway(config)


def denied(gateway: Gateway, tool: str) -> bool:
    return not gateway.policy.decider.decide("crm", tool, {}, None).allowed


async def test_a_broken_edit_keeps_the_old_policy_and_a_fixed_one_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = perimeter_gateway(tmp_path)
    assert denied(gateway, "wipe") and not denied(gateway, "lookup")
    before = gateway.engine

    (tmp_path / "perimeter.cedar").write_text(BROKEN)
    with caplog.at_level(logging.ERROR, logger="inwall.governance"):
        assert gateway.reload_policy() is False
    assert gateway.engine is before and gateway.policy_rejections == 1
    assert denied(gateway, "wipe") and not denied(gateway, "lookup")  # still V1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "inwall.governance"]
    assert "rejected; the previous policy stays in force" in line and "perimeter.cedar:1" in line

    (tmp_path / "perimeter.cedar").write_text(V2)
    assert gateway.reload_policy() is True and gateway.policy_reloads == 1
    assert denied(gateway, "lookup") and not denied(gateway, "wipe")


async def test_the_running_gateway_watches_its_policy_file(tmp_path: Path) -> None:
    gateway = perimeter_gateway(tmp_path, interval=0.01)
    async with gateway.running():
        with anyio.fail_after(5):
            (tmp_path / "perimeter.cedar").write_text(BROKEN)
            await gateway.wait_policy_change()
        assert gateway.policy_rejections == 1 and denied(gateway, "wipe")
        with anyio.fail_after(5):
            (tmp_path / "perimeter.cedar").write_text(V2)
            await gateway.wait_policy_change()
        assert gateway.policy_reloads == 1 and denied(gateway, "lookup") and not denied(gateway, "wipe")
    assert ALICE.kind == "user"


def test_public_names_of_the_perimeter_modules() -> None:
    import inwall.gateway.cedar
    import inwall.gateway.identity

    for module in (inwall.gateway.cedar, inwall.gateway.identity):
        for name in module.__all__:
            assert hasattr(module, name), name
