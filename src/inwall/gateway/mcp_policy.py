"""The perimeter's MCP policy, sans-I/O: read what the caller sends, decide, and filter what comes back.

Why a gateway parses MCP at all: the private server may expose tools the
tunnel owner does not want reachable from the control plane. The gateway is
the last point the owner controls, so it decides there, before the upstream
sees the request, and it hides denied tools from ``tools/list`` so a model is
never offered what it may not call.

Fail closed: a body it cannot read exactly as the upstream would (not JSON,
duplicate keys, a routing header that disagrees with the body, an unknown
protocol version, a malformed ``tools/call``) is refused with a JSON-RPC
error, never forwarded. Both protocol eras are read: legacy (``initialize``,
``mcp-session-id``) and modern 2026-07-28 (``mcp-method`` / ``mcp-name``
headers and a per-request ``_meta`` envelope).

The decision itself is behind the :class:`Decider` seam. Today
:class:`ToolListDecider` applies each route's ``allow_tools`` / ``deny_tools``;
Cedar policies and a signed caller identity (``X-Inwall-Identity``, verified
by an :class:`IdentityVerifier`) plug in there later without touching the
parsing or filtering here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from inwall.gateway._jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    StrictJSONError,
    dumps,
    error_body,
    error_message,
    is_request_id,
    loads_strict,
)
from inwall.gateway._sse import SseParser, SseTooLarge, encode_event

__all__ = [
    "HANDSHAKE_VERSIONS",
    "HEADER_MISMATCH",
    "MODERN_VERSIONS",
    "POLICY_DENIED",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "Decider",
    "Decision",
    "Era",
    "FilterError",
    "IdentityVerifier",
    "Message",
    "NoIdentity",
    "PerimeterPolicy",
    "Reply",
    "RequestVerdict",
    "ResponseFilter",
    "ToolListDecider",
    "ToolRule",
]

# Protocol facts, mirrored from mcp_types.version / mcp.shared.inbound so this core
# imports no SDK (tests check they agree).
HANDSHAKE_VERSIONS: tuple[str, ...] = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_VERSIONS: tuple[str, ...] = ("2026-07-28",)
HEADER_MISMATCH = -32020
UNSUPPORTED_PROTOCOL_VERSION = -32022
POLICY_DENIED = INVALID_PARAMS
"""A denied ``tools/call`` is answered like an unknown tool (-32602): clients already handle that."""

VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
_ROUTING_HEADERS = frozenset({VERSION_HEADER, METHOD_HEADER, NAME_HEADER})
_META_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
_NAME_BEARING: Mapping[str, str] = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})


class Era(StrEnum):
    LEGACY = "legacy"
    MODERN = "modern"


@dataclass(frozen=True)
class Decision:
    """The answer to one question: may this caller use this tool on this route."""

    allowed: bool
    reason: str = ""
    rule: str = ""  # which rule decided, recorded in the audit log

    @classmethod
    def allow(cls, reason: str = "", rule: str = "") -> Decision:
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str = "") -> Decision:
        return cls(False, reason, rule)


class Decider(Protocol):
    """The policy seam.

    ``arguments`` is the call's argument object for ``tools/call`` (``{}`` when
    absent) and ``None`` when the question is whether the tool may be *listed*
    (``tools/list`` filtering). ``identity_claims`` are the verified claims of
    the caller (``X-Inwall-Identity``) or ``None`` when no verifier is set or the
    header is absent. Must be fast and must not do I/O: it runs inline for
    every call and for every tool of every listing.
    """

    def decide(
        self,
        route: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        identity_claims: Mapping[str, Any] | None,
    ) -> Decision: ...


class IdentityVerifier(Protocol):
    """Turns the ``X-Inwall-Identity`` header into verified claims (or refuses it by raising ValueError)."""

    def verify(self, header_value: str | None) -> Mapping[str, Any] | None: ...


class NoIdentity:
    """Today's verifier: no signed identity is configured, so nothing is claimed."""

    def verify(self, header_value: str | None) -> Mapping[str, Any] | None:
        return None


@dataclass(frozen=True)
class ToolRule:
    """``allow`` None means every tool not denied; an empty ``allow`` means none."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()


class ToolListDecider:
    """Per-route allow/deny lists: deny wins, then the allow list (if any) must name the tool."""

    def __init__(self, rules: Mapping[str, ToolRule]) -> None:
        self._rules = dict(rules)

    def decide(
        self,
        route: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        identity_claims: Mapping[str, Any] | None,
    ) -> Decision:
        rule = self._rules.get(route)
        if rule is None:
            return Decision.allow(rule="no_rule")
        if tool_name in rule.deny:
            return Decision.deny(f"tool {tool_name!r} is in deny_tools of route {route!r}", rule="deny_tools")
        if rule.allow is not None and tool_name not in rule.allow:
            return Decision.deny(
                f"tool {tool_name!r} is not in allow_tools of route {route!r}", rule="allow_tools"
            )
        return Decision.allow(rule="allow_tools" if rule.allow is not None else "default")


@dataclass(frozen=True)
class Message:
    """One caller message as the audit log records it (never the argument values)."""

    kind: Literal["request", "notification", "response"]
    id: Any
    method: str | None
    tool: str | None = None
    input_digest: str | None = None


@dataclass(frozen=True)
class Reply:
    """A response the gateway sends itself instead of forwarding."""

    status: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True)
class RequestVerdict:
    forward: bool
    reply: Reply | None = None
    era: Era | None = None
    messages: tuple[Message, ...] = ()
    decisions: tuple[tuple[str, Decision], ...] = ()
    lists_tools: bool = False  # the response may carry a tools/list result and must be filtered
    refusal: str | None = None  # why the request was refused before any decision

    @property
    def outcome(self) -> str:
        if self.forward:
            return "forwarded"
        if self.decisions and any(not d.allowed for _, d in self.decisions):
            return "denied"
        return "refused"


class FilterError(ValueError):
    """The upstream's response cannot be filtered safely; it must not reach the caller."""


class _Refuse(Exception):
    def __init__(
        self, status: int, code: int, message: str, request_id: Any = None, data: Any = None
    ) -> None:
        super().__init__(message)
        self.reply = Reply(status, error_body(request_id, code, message, data))
        self.reason = message


class PerimeterPolicy:
    """Reads requests and builds response filters for every route; one instance per gateway."""

    def __init__(
        self,
        decider: Decider,
        *,
        digest_key: bytes | None = None,
        max_filtered_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.decider = decider
        self._digest_key = digest_key
        self._max_filtered = max_filtered_bytes

    # -- requests ---------------------------------------------------------------------------

    def check(
        self,
        route: str,
        http_method: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        identity: Mapping[str, Any] | None = None,
    ) -> RequestVerdict:
        """Decide one HTTP request. ``headers`` are (lower-case name, value) pairs, duplicates kept."""
        try:
            return self._check(route, http_method, headers, body, identity)
        except _Refuse as refuse:
            return RequestVerdict(forward=False, reply=refuse.reply, refusal=refuse.reason)

    def _check(
        self,
        route: str,
        http_method: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        identity: Mapping[str, Any] | None,
    ) -> RequestVerdict:
        if http_method == "POST":
            return self._check_post(route, headers, body, identity)
        if http_method not in _BODYLESS_METHODS:
            raise _Refuse(405, INVALID_REQUEST, f"method {http_method} is not part of MCP's HTTP transport")
        if body:
            raise _Refuse(400, INVALID_REQUEST, f"a {http_method} request must not carry a body")
        return RequestVerdict(forward=True)

    def _check_post(
        self,
        route: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        identity: Mapping[str, Any] | None,
    ) -> RequestVerdict:
        seen: set[str] = set()
        single: dict[str, str] = {}
        for name, value in headers:
            if name in _ROUTING_HEADERS:
                if name in seen:
                    raise _Refuse(400, HEADER_MISMATCH, f"the {name} header is repeated")
                seen.add(name)
            single.setdefault(name, value)
        media_type = single.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise _Refuse(415, INVALID_REQUEST, "an MCP POST must have content-type application/json")
        try:
            parsed = loads_strict(body)
        except StrictJSONError as exc:
            raise _Refuse(400, PARSE_ERROR, f"the gateway cannot parse the request body: {exc}") from None
        if isinstance(parsed, list):
            if not parsed:
                raise _Refuse(400, INVALID_REQUEST, "an empty JSON-RPC batch")
            raw_messages, batch = parsed, True
        else:
            raw_messages, batch = [parsed], False
        messages = [self._message(raw) for raw in raw_messages]
        era = self._era(single, raw_messages)
        self._check_routing_headers(single, raw_messages, era, batch)

        decisions: list[tuple[str, Decision]] = []
        for raw, message in zip(raw_messages, messages, strict=True):
            if message.method == "tools/call" and message.tool is not None:
                arguments = raw["params"].get("arguments") or {}
                decisions.append(
                    (message.tool, self.decider.decide(route, message.tool, arguments, identity))
                )
        lists_tools = any(m.method == "tools/list" for m in messages)
        if all(d.allowed for _, d in decisions):
            return RequestVerdict(
                forward=True,
                era=era,
                messages=tuple(messages),
                decisions=tuple(decisions),
                lists_tools=lists_tools,
            )
        return RequestVerdict(
            forward=False,
            reply=self._denial(route, messages, decisions, era, batch),
            era=era,
            messages=tuple(messages),
            decisions=tuple(decisions),
        )

    def _message(self, raw: Any) -> Message:
        if not isinstance(raw, dict) or raw.get("jsonrpc") != "2.0":
            raise _Refuse(
                400, INVALID_REQUEST, 'not a JSON-RPC 2.0 message (expected an object with "jsonrpc":"2.0")'
            )
        if "method" in raw:
            method = raw["method"]
            if not isinstance(method, str) or not method:
                raise _Refuse(400, INVALID_REQUEST, "a JSON-RPC method must be a non-empty string")
            if "result" in raw or "error" in raw:
                raise _Refuse(400, INVALID_REQUEST, "a message cannot be both a request and a response")
            params = raw.get("params")
            if "params" in raw and not isinstance(params, dict):
                raise _Refuse(400, INVALID_REQUEST, "MCP params must be an object", raw.get("id"))
            if "id" in raw:
                if not is_request_id(raw["id"]):
                    raise _Refuse(
                        400, INVALID_REQUEST, "a JSON-RPC request id must be a string or an integer"
                    )
                kind: Literal["request", "notification"] = "request"
            else:
                kind = "notification"
            if method == "tools/call":
                return self._tool_call(raw, kind, params)
            return Message(kind, raw.get("id"), method)
        if "id" not in raw or not (is_request_id(raw["id"]) or raw["id"] is None):
            raise _Refuse(400, INVALID_REQUEST, "a JSON-RPC response needs an id")
        if ("result" in raw) == ("error" in raw):
            raise _Refuse(400, INVALID_REQUEST, "a JSON-RPC response needs exactly one of result and error")
        return Message("response", raw["id"], None)

    def _tool_call(
        self, raw: dict[str, Any], kind: Literal["request", "notification"], params: Any
    ) -> Message:
        request_id = raw.get("id")
        if kind != "request":
            raise _Refuse(400, INVALID_REQUEST, "tools/call must be a request (it has no id)")
        if not isinstance(params, dict):
            raise _Refuse(400, INVALID_PARAMS, "tools/call needs params", request_id)
        name = params.get("name")
        if not isinstance(name, str) or not name:
            raise _Refuse(400, INVALID_PARAMS, "tools/call needs a tool name (params.name)", request_id)
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            raise _Refuse(400, INVALID_PARAMS, "tools/call arguments must be an object", request_id)
        return Message("request", request_id, "tools/call", name, self._digest(arguments or {}))

    def _digest(self, arguments: Mapping[str, Any]) -> str:
        data = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if self._digest_key is not None:
            return "hmac-sha256:" + hmac.new(self._digest_key, data, hashlib.sha256).hexdigest()
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def _era(self, headers: Mapping[str, str], raw_messages: Iterable[dict[str, Any]]) -> Era:
        supported = [*HANDSHAKE_VERSIONS, *MODERN_VERSIONS]
        header = headers.get(VERSION_HEADER)
        if header is not None and header not in supported:
            raise _Refuse(
                400,
                UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                data={"supported": supported, "requested": header},
            )
        body_version: str | None = None
        for raw in raw_messages:
            meta = raw.get("params", {}).get("_meta") if isinstance(raw.get("params"), dict) else None
            if isinstance(meta, dict) and _META_VERSION_KEY in meta:
                value = meta[_META_VERSION_KEY]
                if not isinstance(value, str) or value not in MODERN_VERSIONS:
                    raise _Refuse(
                        400,
                        UNSUPPORTED_PROTOCOL_VERSION,
                        "Unsupported protocol version",
                        raw.get("id"),
                        {
                            "supported": list(MODERN_VERSIONS),
                            "requested": value if isinstance(value, str) else None,
                        },
                    )
                if header is not None and header != value:
                    raise _Refuse(
                        400,
                        HEADER_MISMATCH,
                        f"{VERSION_HEADER} header does not match the request envelope's protocol version",
                        raw.get("id"),
                    )
                body_version = value
        if header in MODERN_VERSIONS or (header is None and body_version is not None):
            return Era.MODERN
        return Era.LEGACY

    def _check_routing_headers(
        self, headers: Mapping[str, str], raw_messages: Sequence[dict[str, Any]], era: Era, batch: bool
    ) -> None:
        method_header = headers.get(METHOD_HEADER)
        name_header = headers.get(NAME_HEADER)
        if batch:
            if method_header is not None or name_header is not None:
                raise _Refuse(400, HEADER_MISMATCH, "mcp-method / mcp-name headers cannot describe a batch")
            if era is Era.MODERN:
                raise _Refuse(400, INVALID_REQUEST, "the 2026-07-28 protocol does not allow batches")
            return
        raw = raw_messages[0]
        method = raw.get("method")
        request_id = raw.get("id")
        if method_header is not None and method_header != method:
            raise _Refuse(
                400, HEADER_MISMATCH, "mcp-method header does not match the request body's method", request_id
            )
        if era is Era.MODERN and method is not None and method_header is None:
            raise _Refuse(
                400, HEADER_MISMATCH, "the 2026-07-28 protocol requires the mcp-method header", request_id
            )
        name_key = _NAME_BEARING.get(method) if isinstance(method, str) else None
        if name_header is not None:
            if name_key is None:
                raise _Refuse(400, HEADER_MISMATCH, f"mcp-name header on a {method} message", request_id)
            if _decode_header_value(name_header) != (raw.get("params") or {}).get(name_key):
                raise _Refuse(
                    400,
                    HEADER_MISMATCH,
                    f"mcp-name header does not match the request body's {name_key!r} parameter",
                    request_id,
                )
        elif era is Era.MODERN and name_key is not None:
            raise _Refuse(
                400, HEADER_MISMATCH, f"the 2026-07-28 protocol requires mcp-name on {method}", request_id
            )

    def _denial(
        self,
        route: str,
        messages: Sequence[Message],
        decisions: Sequence[tuple[str, Decision]],
        era: Era,
        batch: bool,
    ) -> Reply:
        verdicts = iter(decisions)
        replies: list[dict[str, Any]] = []
        for message in messages:
            if message.kind != "request":
                continue
            if message.method == "tools/call":
                tool, decision = next(verdicts)
                if not decision.allowed:
                    replies.append(
                        error_message(
                            message.id,
                            POLICY_DENIED,
                            f"Tool {tool!r} is not allowed by the inwall gateway's policy for {route!r}",
                            {"reason": decision.reason, "rule": decision.rule},
                        )
                    )
                    continue
            replies.append(
                error_message(
                    message.id, INVALID_REQUEST, "batch refused: it contains a tool call the gateway denies"
                )
            )
        status = 400 if era is Era.MODERN else 200
        return Reply(status, dumps(replies if batch else replies[0]))

    # -- responses --------------------------------------------------------------------------

    def tool_visible(self, route: str, tool_name: str, identity: Mapping[str, Any] | None) -> bool:
        return self.decider.decide(route, tool_name, None, identity).allowed

    def response_filter(
        self,
        route: str,
        http_method: str,
        verdict: RequestVerdict,
        *,
        status: int,
        headers: Mapping[str, str],
        identity: Mapping[str, Any] | None = None,
    ) -> ResponseFilter:
        """How to treat the upstream's response. Raises FilterError when it must not be relayed.

        A POST's response is parsed only when the request listed tools (the
        common path streams bytes untouched); a GET stream is always parsed,
        because a resumed stream can replay a ``tools/list`` result.
        """
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()

        def visible(name: str) -> bool:
            return self.tool_visible(route, name, identity)

        must_filter = verdict.lists_tools if http_method == "POST" else http_method == "GET"
        if not must_filter or status >= 300 or status in (202, 204) or http_method == "HEAD":
            return ResponseFilter("pass", visible, self._max_filtered)
        if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise FilterError("the upstream compressed a response the gateway must filter")
        if media_type == "text/event-stream":
            return ResponseFilter("sse", visible, self._max_filtered)
        if media_type == "application/json" and http_method == "POST":
            return ResponseFilter("json", visible, self._max_filtered)
        if http_method == "GET":
            return ResponseFilter("pass", visible, self._max_filtered)
        raise FilterError(f"the upstream answered tools/list with content-type {media_type or 'none'!r}")


@dataclass
class ResponseFilter:
    """Rewrites ``tools/list`` results to the visible tools; ``mode`` tells the driver how to feed it.

    ``pass``: relay bytes untouched. ``json``: buffer the whole body, then call
    :meth:`filter_json`. ``sse``: call :meth:`feed` per chunk and :meth:`end`
    at the end; events other than a tools/list result pass byte for byte.
    """

    mode: Literal["pass", "json", "sse"]
    visible: Callable[[str], bool]
    max_bytes: int
    hidden: int = 0
    dropped_events: int = 0
    _parser: SseParser | None = field(default=None, repr=False)

    def filter_json(self, body: bytes) -> bytes:
        if len(body) > self.max_bytes:
            raise FilterError("the upstream's tools/list response is too large to filter")
        try:
            parsed = loads_strict(body)
        except StrictJSONError as exc:
            raise FilterError(f"the upstream's response is not JSON the gateway can read: {exc}") from None
        if isinstance(parsed, list):
            changed = [self.filter_message(m) for m in parsed]
            return dumps([m for m, _ in changed]) if any(c for _, c in changed) else body
        message, changed_one = self.filter_message(parsed)
        return dumps(message) if changed_one else body

    def feed(self, chunk: bytes) -> bytes:
        if self._parser is None:
            self._parser = SseParser(max_event_bytes=self.max_bytes)
        try:
            events = self._parser.feed(chunk)
        except SseTooLarge as exc:
            raise FilterError(str(exc)) from None
        out = bytearray()
        for event in events:
            if event.data is None:
                out += event.raw
                continue
            try:
                parsed = loads_strict(event.data)
            except StrictJSONError:
                self.dropped_events += 1  # not a message a client could read; never guess at it
                continue
            message, changed = self.filter_message(parsed)
            out += (
                encode_event(dumps(message).decode(), event=event.event, id=event.id)
                if changed
                else event.raw
            )
        return bytes(out)

    def end(self) -> bytes:
        """A stream that ends mid-event drops the partial event (it may be an unfiltered listing)."""
        if self._parser is not None and self._parser.pending().strip():
            self.dropped_events += 1
        return b""

    def filter_message(self, message: Any) -> tuple[Any, bool]:
        if not isinstance(message, dict):
            return message, False
        result = message.get("result")
        if "method" in message or not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return message, False
        kept = [
            tool
            for tool in result["tools"]
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and self.visible(tool["name"])
        ]
        if len(kept) == len(result["tools"]):
            return message, False
        self.hidden += len(result["tools"]) - len(kept)
        return {**message, "result": {**result, "tools": kept}}, True


def _decode_header_value(value: str) -> str | None:
    """The SDK's ``=?base64?...?=`` header encoding (mcp.shared.inbound.decode_header_value)."""
    match = _B64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
    except binascii.Error:
        return None
    if base64.b64encode(decoded).decode("ascii") != payload:
        return None
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
