"""The sans-I/O MCP policy: parsing both eras, deciding, refusing garbage, filtering listings."""

from __future__ import annotations

import base64
import json
from typing import Any

import mcp_types
import mcp_types.version
import pytest
from mcp.shared.inbound import decode_header_value, encode_header_value

import inwall.gateway
import inwall.gateway.mcp_policy as policy_module
from inwall.gateway._sse import SseParser, encode_event
from inwall.gateway.identity import IDENTITY_META_KEY
from inwall.gateway.mcp_policy import (
    Decision,
    Era,
    FilterError,
    PerimeterPolicy,
    ToolListDecider,
    ToolRule,
)
from tests.gateway.conftest import Signer

RULES = {
    "crm": ToolRule(allow=None, deny=frozenset({"secret_dump"})),
    "wiki": ToolRule(allow=frozenset({"echo"})),
}
JSON = [("content-type", "application/json")]
MODERN = "2026-07-28"


def policy() -> PerimeterPolicy:
    return PerimeterPolicy(ToolListDecider(RULES))


def call(name: str, arguments: Any = None, request_id: Any = 1, **params: Any) -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, **params}
    if arguments is not None:
        p["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": p}


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def error_of(verdict: Any) -> dict[str, Any]:
    assert verdict.reply is not None
    message = json.loads(verdict.reply.body)
    assert "error" in message, message
    return message["error"]


def modern_meta() -> dict[str, Any]:
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }


# -- decisions ------------------------------------------------------------------------------


def test_tool_lists_deny_wins_and_allow_list_is_exhaustive() -> None:
    decider = ToolListDecider({"r": ToolRule(allow=frozenset({"a", "b"}), deny=frozenset({"b"}))})
    assert decider.decide("r", "a", {}, None).allowed
    assert not decider.decide("r", "b", {}, None).allowed
    assert decider.decide("r", "b", {}, None).rule == "deny_tools"
    assert not decider.decide("r", "c", {}, None).allowed
    assert decider.decide("other", "anything", {}, None).allowed
    assert not ToolListDecider({"r": ToolRule(allow=frozenset())}).decide("r", "a", None, None).allowed


def test_allowed_call_is_forwarded_with_an_input_digest_not_the_arguments() -> None:
    verdict = policy().check("crm", "POST", JSON, body(call("echo", {"text": "hunter2"})))
    assert verdict.forward and verdict.era is Era.LEGACY
    (message,) = verdict.messages
    assert message.tool == "echo" and message.input_digest is not None
    assert message.input_digest.startswith("sha256:") and "hunter2" not in message.input_digest
    keyed = PerimeterPolicy(ToolListDecider(RULES), digest_key=b"k").check(
        "crm", "POST", JSON, body(call("echo", {"text": "hunter2"}))
    )
    assert keyed.messages[0].input_digest is not None
    assert keyed.messages[0].input_digest.startswith("hmac-sha256:")


@pytest.mark.parametrize(("route", "tool"), [("crm", "secret_dump"), ("wiki", "add")])
def test_denied_call_gets_a_jsonrpc_error_with_its_id(route: str, tool: str) -> None:
    verdict = policy().check(route, "POST", JSON, body(call(tool, {}, request_id="abc")))
    assert not verdict.forward and verdict.outcome == "denied"
    assert verdict.reply is not None and verdict.reply.status == 200
    message = json.loads(verdict.reply.body)
    assert message["id"] == "abc"
    assert message["error"]["code"] == mcp_types.INVALID_PARAMS
    assert tool in message["error"]["message"]


def test_a_batch_with_one_denied_call_is_refused_whole() -> None:
    batch = [call("echo", {"text": "x"}, 1), call("secret_dump", {}, 2), {"jsonrpc": "2.0", "method": "n"}]
    verdict = policy().check("crm", "POST", JSON, body(batch))
    assert not verdict.forward
    assert verdict.reply is not None
    replies = json.loads(verdict.reply.body)
    assert [r["id"] for r in replies] == [1, 2]
    assert "batch refused" in replies[0]["error"]["message"]
    assert "secret_dump" in replies[1]["error"]["message"]
    allowed = policy().check("crm", "POST", JSON, body([call("echo", {}, 1), call("add", {}, 2)]))
    assert allowed.forward  # positive control


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, Any]] = []

    def decide(self, route: str, tool_name: str, arguments: Any, identity_claims: Any) -> Decision:
        self.calls.append((route, tool_name, arguments, identity_claims))
        return Decision.deny("no", rule="custom") if tool_name == "nope" else Decision.allow()


def test_the_decider_seam_sees_route_tool_arguments_and_identity(signer: Signer) -> None:
    recorder = Recorder()
    p = PerimeterPolicy(recorder, identity=signer.caller_identity())
    signed = {IDENTITY_META_KEY: signer.token("echo", {"a": 1})}
    assert p.check("crm", "POST", JSON, body(call("echo", {"a": 1}, _meta=signed))).forward
    assert not p.check("crm", "POST", JSON, body(call("nope"))).forward
    (route, tool, arguments, claims), unsigned = recorder.calls
    assert (route, tool, arguments) == ("crm", "echo", {"a": 1})
    assert claims is not None and claims["sub"] == "user_alice" and claims["tool"] == "echo"
    assert unsigned == ("crm", "nope", {}, None)  # no token: the anonymous caller
    assert p.tool_visible("crm", "x", None)
    assert recorder.calls[-1] == ("crm", "x", None, None)  # listing asks with arguments=None


# -- fail closed ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"not json", 400, mcp_types.PARSE_ERROR),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"secret_dump"}}',
            400,
            -32700,
        ),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"v":NaN}}', 400, mcp_types.PARSE_ERROR),
        (b"\xff\xfe", 400, mcp_types.PARSE_ERROR),
        (b"[]", 400, mcp_types.INVALID_REQUEST),
        (b"42", 400, mcp_types.INVALID_REQUEST),
        (b'{"id":1,"method":"tools/list"}', 400, mcp_types.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":null,"method":"tools/list"}', 400, mcp_types.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"tools/list"}', 400, mcp_types.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}', 400, mcp_types.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}', 400, mcp_types.INVALID_PARAMS),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}',
            400,
            mcp_types.INVALID_PARAMS,
        ),
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"e","arguments":[1]}}',
            400,
            -32602,
        ),
        (b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"}}', 400, mcp_types.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', 400, mcp_types.INVALID_REQUEST),
    ],
)
def test_what_cannot_be_read_exactly_is_refused(raw: bytes, status: int, code: int) -> None:
    verdict = policy().check("crm", "POST", JSON, raw)
    assert not verdict.forward and verdict.outcome == "refused"
    assert verdict.reply is not None and verdict.reply.status == status
    assert error_of(verdict)["code"] == code


def test_content_type_and_http_methods_are_checked() -> None:
    p = policy()
    good = body(call("echo", {}))
    assert p.check("crm", "POST", [("content-type", "application/json; charset=utf-8")], good).forward
    refused = p.check("crm", "POST", [("content-type", "text/plain")], good)
    assert refused.reply is not None and refused.reply.status == 415
    assert p.check("crm", "GET", [], b"").forward
    assert p.check("crm", "DELETE", [], b"").forward
    with_body = p.check("crm", "GET", [], good)
    assert with_body.reply is not None and with_body.reply.status == 400
    put = p.check("crm", "PUT", JSON, good)
    assert put.reply is not None and put.reply.status == 405


def test_client_responses_and_notifications_pass() -> None:
    p = policy()
    assert p.check("crm", "POST", JSON, body({"jsonrpc": "2.0", "id": 5, "result": {}})).forward
    assert p.check(
        "crm", "POST", JSON, body({"jsonrpc": "2.0", "id": 5, "error": {"code": 1, "message": "x"}})
    ).forward
    assert p.check(
        "crm", "POST", JSON, body({"jsonrpc": "2.0", "method": "notifications/initialized"})
    ).forward


# -- protocol eras --------------------------------------------------------------------------


def modern_call(name: str, **extra_headers: str) -> tuple[list[tuple[str, str]], bytes]:
    message = call(name, {"text": "x"}, _meta=modern_meta())
    headers = [*JSON, ("mcp-protocol-version", MODERN), ("mcp-method", "tools/call"), ("mcp-name", name)]
    headers += list(extra_headers.items())
    return headers, body(message)


def test_modern_era_is_read_from_headers_and_envelope() -> None:
    headers, raw = modern_call("echo")
    verdict = policy().check("crm", "POST", headers, raw)
    assert verdict.forward and verdict.era is Era.MODERN
    headers, raw = modern_call("secret_dump")
    denied = policy().check("crm", "POST", headers, raw)
    assert not denied.forward and denied.outcome == "denied"
    assert denied.reply is not None and denied.reply.status == 400  # the modern era maps -32602 to 400


def test_modern_header_that_disagrees_with_the_body_is_refused() -> None:
    message = call("secret_dump", {}, _meta=modern_meta())
    headers = [*JSON, ("mcp-protocol-version", MODERN), ("mcp-method", "tools/call"), ("mcp-name", "echo")]
    verdict = policy().check("crm", "POST", headers, body(message))
    assert not verdict.forward and error_of(verdict)["code"] == -32020
    wrong_method = [
        *JSON,
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/list"),
        ("mcp-name", "echo"),
    ]
    assert error_of(policy().check("crm", "POST", wrong_method, body(message)))["code"] == -32020
    missing = [*JSON, ("mcp-protocol-version", MODERN), ("mcp-name", "secret_dump")]
    assert error_of(policy().check("crm", "POST", missing, body(message)))["code"] == -32020
    repeated = [*JSON, ("mcp-method", "tools/call"), ("mcp-method", "tools/call")]
    assert error_of(policy().check("crm", "POST", repeated, body(call("echo"))))["code"] == -32020


def test_base64_mcp_name_is_decoded_like_the_sdk() -> None:
    name = "ümlaut tool"
    encoded = encode_header_value(name)
    assert encoded.startswith("=?base64?")
    assert policy_module._decode_header_value(encoded) == decode_header_value(encoded) == name
    bad = "=?base64?" + base64.b64encode(b"x").decode().rstrip("=") + "?="
    assert policy_module._decode_header_value(bad) == decode_header_value(bad)
    message = call(name, {}, _meta=modern_meta())
    headers = [*JSON, ("mcp-protocol-version", MODERN), ("mcp-method", "tools/call"), ("mcp-name", encoded)]
    assert policy().check("crm", "POST", headers, body(message)).forward


def test_unknown_protocol_versions_are_refused_with_the_supported_list() -> None:
    verdict = policy().check(
        "crm", "POST", [*JSON, ("mcp-protocol-version", "2099-01-01")], body(call("echo"))
    )
    error = error_of(verdict)
    assert error["code"] == -32022
    assert MODERN in error["data"]["supported"] and "2025-11-25" in error["data"]["supported"]
    envelope = call("echo", {}, _meta={"io.modelcontextprotocol/protocolVersion": "2099-01-01"})
    assert error_of(policy().check("crm", "POST", JSON, body(envelope)))["code"] == -32022


def test_protocol_constants_match_the_sdk() -> None:
    assert policy_module.HANDSHAKE_VERSIONS == mcp_types.version.HANDSHAKE_PROTOCOL_VERSIONS
    assert policy_module.MODERN_VERSIONS == mcp_types.version.MODERN_PROTOCOL_VERSIONS
    assert policy_module.HEADER_MISMATCH == mcp_types.HEADER_MISMATCH
    assert policy_module.UNSUPPORTED_PROTOCOL_VERSION == mcp_types.UNSUPPORTED_PROTOCOL_VERSION


# -- response filtering ---------------------------------------------------------------------


def listing(request_id: Any = 2, names: tuple[str, ...] = ("echo", "secret_dump", "add")) -> dict[str, Any]:
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in names]
    return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools, "nextCursor": "c"}}


def list_verdict(p: PerimeterPolicy) -> Any:
    verdict = p.check("crm", "POST", JSON, body({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
    assert verdict.forward and verdict.lists_tools
    return verdict


def test_json_listing_is_filtered() -> None:
    p = policy()
    f = p.response_filter(
        "crm", "POST", list_verdict(p), status=200, headers={"content-type": "application/json"}
    )
    assert f.mode == "json"
    out = json.loads(f.filter_json(body(listing())))
    assert [t["name"] for t in out["result"]["tools"]] == ["echo", "add"]
    assert out["result"]["nextCursor"] == "c" and f.hidden == 1
    batch = json.loads(f.filter_json(body([listing(2), listing(3, ("secret_dump",))])))
    assert [len(m["result"]["tools"]) for m in batch] == [2, 0]
    with pytest.raises(FilterError):
        f.filter_json(b"{not json")


def test_sse_listing_is_filtered_at_every_chunk_boundary() -> None:
    p = policy()
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": 1, "progress": 1},
    }
    stream = (
        b": comment\r\n\r\n"
        + encode_event(json.dumps(progress), id="e1")
        + b"event: message\r\ndata: "
        + json.dumps(listing()).encode()
        + b"\r\n\r\n"
    )
    for split in range(len(stream) + 1):
        f = p.response_filter(
            "crm", "POST", list_verdict(p), status=200, headers={"content-type": "text/event-stream"}
        )
        assert f.mode == "sse"
        out = f.feed(stream[:split]) + f.feed(stream[split:]) + f.end()
        events = SseParser().feed(out)
        assert events[0].data is None and events[0].raw == b": comment\r\n\r\n"
        assert events[1].raw == encode_event(json.dumps(progress), id="e1")  # untouched, byte for byte
        assert events[2].event == "message"
        assert events[2].data is not None
        assert [t["name"] for t in json.loads(events[2].data)["result"]["tools"]] == ["echo", "add"]


def test_sse_parser_accepts_lf_and_cr_line_endings() -> None:
    for eol in (b"\n", b"\r", b"\r\n"):
        raw = b"event: message" + eol + b"data: a" + eol + b"data: b" + eol + eol
        parser = SseParser()
        # a CR at the end of a chunk may be half of a CRLF, so the event completes with the next byte
        events = parser.feed(raw) + parser.feed(b":")
        assert len(events) == 1 and events[0].data == "a\nb" and events[0].raw == raw


def test_sse_events_the_gateway_cannot_read_are_dropped_not_relayed() -> None:
    p = policy()
    f = p.response_filter(
        "crm", "POST", list_verdict(p), status=200, headers={"content-type": "text/event-stream"}
    )
    out = f.feed(b"data: {broken\n\n") + f.feed(b"data: " + json.dumps(listing()).encode())
    out += f.end()  # the stream ended mid-event: the partial listing never leaves
    assert out == b"" and f.dropped_events == 2


def test_responses_that_need_no_filter_pass_untouched() -> None:
    p = policy()
    call_verdict = p.check("crm", "POST", JSON, body(call("echo", {})))
    assert p.response_filter("crm", "POST", call_verdict, status=200, headers={}).mode == "pass"
    verdict = list_verdict(p)
    assert p.response_filter("crm", "POST", verdict, status=404, headers={}).mode == "pass"
    assert p.response_filter("crm", "POST", verdict, status=202, headers={}).mode == "pass"
    get = p.check("crm", "GET", [], b"")
    assert (
        p.response_filter("crm", "GET", get, status=200, headers={"content-type": "text/event-stream"}).mode
        == "sse"
    )


def test_responses_that_cannot_be_filtered_are_refused() -> None:
    p = policy()
    verdict = list_verdict(p)
    with pytest.raises(FilterError, match="compressed"):
        p.response_filter(
            "crm",
            "POST",
            verdict,
            status=200,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    with pytest.raises(FilterError, match="content-type"):
        p.response_filter("crm", "POST", verdict, status=200, headers={"content-type": "text/html"})


def test_public_names() -> None:
    for module in (inwall.gateway, policy_module):
        for name in module.__all__:
            assert hasattr(module, name), name
