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

Who is calling comes from the control plane's signed identity token
(``params._meta["inwall/identity"]`` or the ``X-Inwall-Identity`` header),
checked per ``tools/call`` by :class:`~inwall.gateway.identity.CallerIdentity`
before any decision and stripped before anything is forwarded: the upstream
never sees a token. A refused token (forged, expired, replayed, another
audience, another tool or arguments, or absent while required) is answered
with a JSON-RPC error (:data:`IDENTITY_REFUSED`) naming only the reason.

The decision itself is behind the :class:`Decider` seam:
:class:`ToolListDecider` applies each route's ``allow_tools`` / ``deny_tools``
and :class:`~inwall.gateway.cedar.CedarDecider` the perimeter's Cedar policy.
A list denial is answered like an unknown tool (-32602); a Cedar denial is
opaque, a tool error result saying only
:data:`~inwall.governance.DENIAL_TEXT`.

Results of ``tools/call`` are redacted on routes that redact (a
:class:`~inwall.governance.Redactor`): text content blocks, the text of
embedded resources, string values inside ``structuredContent`` (keys are left
alone) and the message of a JSON-RPC error answering a call. Images, audio and
base64 blobs pass untouched. ``structuredContent`` is redacted in place, which
keeps its shape; but the SDK client validates it against the tool's
``outputSchema``, and a redacted string can break a schema that constrains
strings (``pattern``, ``enum``, ``const``, ``minLength``/``maxLength``). So
the gateway remembers the output schemas it relays in ``tools/list`` results,
and when a redaction touched ``structuredContent`` of a tool whose schema
constrains strings anywhere, it drops ``structuredContent`` and marks the
result ``isError`` (the text content, redacted, stays): the client then skips
validation instead of failing, and the original value never leaves. A schema
the gateway has not seen (a listing made before it started) is not checked.
Redaction counts are replacements: a value present both as text and in
``structuredContent`` counts twice. Progress and log notifications are not
redacted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

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
from inwall.gateway.identity import IDENTITY_HEADER, IDENTITY_META_KEY, CallerIdentity
from inwall.governance import DENIAL_TEXT, IdentityError

if TYPE_CHECKING:
    from inwall.governance import Redactor, VerifiedIdentity

__all__ = [
    "HANDSHAKE_VERSIONS",
    "HEADER_MISMATCH",
    "IDENTITY_REFUSED",
    "MODERN_VERSIONS",
    "POLICY_DENIED",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "Decider",
    "Decision",
    "Era",
    "FilterError",
    "IdentityNote",
    "Message",
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
"""A ``tools/call`` a list denies is answered like an unknown tool (-32602): clients handle that."""
IDENTITY_REFUSED = -32010
"""The caller identity of a ``tools/call`` was refused (implementation-defined band; not -32000/-32001,
which the SDK reads as a dead connection or a timeout)."""

VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
_ROUTING_HEADERS = frozenset({VERSION_HEADER, METHOD_HEADER, NAME_HEADER})
_SINGLE_HEADERS = _ROUTING_HEADERS | {IDENTITY_HEADER}
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
    opaque: bool = False  # a denial the caller learns nothing about but DENIAL_TEXT

    @classmethod
    def allow(cls, reason: str = "", rule: str = "") -> Decision:
        return cls(True, reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str = "", *, opaque: bool = False) -> Decision:
        return cls(False, reason, rule, opaque)


class Decider(Protocol):
    """The policy seam.

    ``arguments`` is the call's argument object for ``tools/call`` (``{}`` when
    absent) and ``None`` when the question is whether the tool may be *listed*
    (``tools/list`` filtering). ``identity_claims`` are the claims of the
    caller's verified identity token (``VerifiedIdentity.payload``), or
    ``None`` for an anonymous caller. Must be fast and must not do I/O: it
    runs inline for every call and for every tool of every listing.
    """

    def decide(
        self,
        route: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        identity_claims: Mapping[str, Any] | None,
    ) -> Decision: ...


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
class IdentityNote:
    """What the audit log says about one message's caller (never the token)."""

    message_id: Any
    outcome: Literal["verified", "refused", "anonymous"]
    caller: str | None = None
    kind: str | None = None
    session_id: str | None = None
    tool_use_id: str | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        fields = (
            ("id", self.message_id),
            ("outcome", self.outcome),
            ("caller", self.caller),
            ("kind", self.kind),
            ("session_id", self.session_id),
            ("tool_use_id", self.tool_use_id),
            ("reason", self.reason),
        )
        return {k: v for k, v in fields if v is not None}


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
    body: bytes | None = None  # what to forward when it differs from what came in (tokens stripped)
    identities: tuple[IdentityNote, ...] = ()
    tool_calls: Mapping[Any, str] = field(default_factory=dict)  # request id -> tool, for results
    listing_claims: Mapping[Any, Mapping[str, Any]] = field(default_factory=dict)  # request id -> caller

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
    """Reads requests and builds response filters for every route; one instance per gateway.

    ``identity`` checks caller tokens (default: none configured, every caller
    anonymous); ``redactor`` redacts tool results on ``redacted_routes``
    (None: every route).
    """

    def __init__(
        self,
        decider: Decider,
        *,
        identity: CallerIdentity | None = None,
        redactor: Redactor | None = None,
        redacted_routes: Collection[str] | None = None,
        digest_key: bytes | None = None,
        max_filtered_bytes: int = 64 * 1024 * 1024,
        max_remembered_schemas: int = 10_000,
    ) -> None:
        self.decider = decider
        self.identity = identity or CallerIdentity(None)
        self.redactor = redactor
        self._redacted_routes = None if redacted_routes is None else frozenset(redacted_routes)
        self._digest_key = digest_key
        self._max_filtered = max_filtered_bytes
        self._max_schemas = max_remembered_schemas
        self._schemas: dict[str, dict[str, Any]] = {}

    def redacts(self, route: str) -> bool:
        return self.redactor is not None and (self._redacted_routes is None or route in self._redacted_routes)

    # -- requests ---------------------------------------------------------------------------

    def check(
        self,
        route: str,
        http_method: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> RequestVerdict:
        """Decide one HTTP request. ``headers`` are (lower-case name, value) pairs, duplicates kept."""
        try:
            return self._check(route, http_method, headers, body)
        except _Refuse as refuse:
            return RequestVerdict(forward=False, reply=refuse.reply, refusal=refuse.reason)

    def _check(
        self,
        route: str,
        http_method: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
    ) -> RequestVerdict:
        if http_method == "POST":
            return self._check_post(route, headers, body)
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
    ) -> RequestVerdict:
        seen: set[str] = set()
        single: dict[str, str] = {}
        for name, value in headers:
            if name in _SINGLE_HEADERS:
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

        header_token = single.get(IDENTITY_HEADER)
        if header_token is not None and batch:
            raise _Refuse(
                400,
                INVALID_REQUEST,
                "the X-Inwall-Identity header cannot describe a batch: sign each tools/call in its _meta",
            )
        forwarded: list[Any] = []
        claims: list[Mapping[str, Any] | None] = []
        notes: list[IdentityNote] = []
        refused: dict[int, IdentityError] = {}
        listing_claims: dict[Any, Mapping[str, Any]] = {}
        for index, (raw, message) in enumerate(zip(raw_messages, messages, strict=True)):
            token, stripped = _take_token(raw)
            forwarded.append(stripped)
            if header_token is not None:
                if token is not None:
                    raise _Refuse(
                        400,
                        INVALID_REQUEST,
                        "a caller identity in both the X-Inwall-Identity header and _meta",
                        raw.get("id"),
                    )
                token = header_token
            verified: VerifiedIdentity | None = None
            try:
                if message.method == "tools/call" and message.tool is not None:
                    arguments = raw["params"].get("arguments") or {}
                    verified = self.identity.verify_call(token, tool=message.tool, arguments=arguments)
                elif message.method == "tools/list" and message.kind == "request" and token is not None:
                    verified = self.identity.verify_listing(token)
                    if verified is not None:
                        listing_claims[message.id] = verified.payload
                else:
                    claims.append(None)
                    continue
            except IdentityError as exc:
                refused[index] = exc
                notes.append(IdentityNote(message.id, "refused", reason=exc.reason))
                claims.append(None)
                continue
            claims.append(verified.payload if verified is not None else None)
            notes.append(_note(message.id, verified))

        rewritten = None
        if any(new is not old for new, old in zip(forwarded, raw_messages, strict=True)):
            rewritten = dumps(forwarded if batch else forwarded[0])
        tool_calls = {m.id: m.tool for m in messages if m.method == "tools/call" and m.tool is not None}
        if refused:
            first = next(iter(refused.values()))
            return RequestVerdict(
                forward=False,
                reply=self._identity_refusal(messages, refused, batch),
                era=era,
                messages=tuple(messages),
                refusal=f"identity refused: {first.reason}",
                identities=tuple(notes),
            )

        decisions: list[tuple[str, Decision]] = []
        for raw, message, caller in zip(raw_messages, messages, claims, strict=True):
            if message.method == "tools/call" and message.tool is not None:
                arguments = raw["params"].get("arguments") or {}
                decisions.append((message.tool, self.decider.decide(route, message.tool, arguments, caller)))
        lists_tools = any(m.method == "tools/list" for m in messages)
        if all(d.allowed for _, d in decisions):
            return RequestVerdict(
                forward=True,
                era=era,
                messages=tuple(messages),
                decisions=tuple(decisions),
                lists_tools=lists_tools,
                body=rewritten,
                identities=tuple(notes),
                tool_calls=tool_calls,
                listing_claims=listing_claims,
            )
        return RequestVerdict(
            forward=False,
            reply=self._denial(route, messages, decisions, era, batch),
            era=era,
            messages=tuple(messages),
            decisions=tuple(decisions),
            identities=tuple(notes),
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
                if decision.opaque and not decision.allowed:
                    replies.append(_denied_result(message.id))
                    continue
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
        errors = any("error" in r for r in replies)
        status = 400 if era is Era.MODERN and errors else 200
        return Reply(status, dumps(replies if batch else replies[0]))

    def _identity_refusal(
        self, messages: Sequence[Message], refused: Mapping[int, IdentityError], batch: bool
    ) -> Reply:
        replies: list[dict[str, Any]] = []
        for index, message in enumerate(messages):
            if message.kind != "request":
                continue
            error = refused.get(index)
            if error is not None:
                replies.append(
                    error_message(message.id, IDENTITY_REFUSED, f"inwall gateway: {error.message}")
                )
            else:
                replies.append(
                    error_message(
                        message.id,
                        INVALID_REQUEST,
                        "batch refused: the gateway refused the caller identity of a call in it",
                    )
                )
        return Reply(200, dumps(replies if batch else replies[0]))

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
    ) -> ResponseFilter:
        """How to treat the upstream's response. Raises FilterError when it must not be relayed.

        A POST's response is parsed only when the request listed tools, or
        called one on a route that redacts (the common path streams bytes
        untouched); a GET stream is always parsed, because a resumed stream
        can replay a ``tools/list`` result or a tool result.
        """
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        listing_claims = verdict.listing_claims

        def visible(request_id: Any, name: str) -> bool:
            claims = listing_claims.get(request_id) if _hashable_id(request_id) else None
            return self.tool_visible(route, name, claims)

        redactor = self.redactor if self.redacts(route) else None
        schemas = self._schemas.setdefault(route, {})

        def make(mode: Literal["pass", "json", "sse"]) -> ResponseFilter:
            return ResponseFilter(
                mode,
                visible,
                self._max_filtered,
                redactor=redactor,
                tool_calls=verdict.tool_calls,
                schemas=schemas,
                max_schemas=self._max_schemas,
            )

        if http_method == "POST":
            must_filter = verdict.lists_tools or (redactor is not None and bool(verdict.tool_calls))
        else:
            must_filter = http_method == "GET"
        if not must_filter or status >= 300 or status in (202, 204) or http_method == "HEAD":
            return make("pass")
        if headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
            raise FilterError("the upstream compressed a response the gateway must filter")
        if media_type == "text/event-stream":
            return make("sse")
        if media_type == "application/json" and http_method == "POST":
            return make("json")
        if http_method == "GET":
            return make("pass")
        what = "tools/list" if verdict.lists_tools else "tools/call"
        raise FilterError(f"the upstream answered {what} with content-type {media_type or 'none'!r}")


_STRING_CONSTRAINTS = frozenset({"pattern", "enum", "const", "minLength", "maxLength"})


def _constrains_strings(schema: Any, depth: int = 0) -> bool:
    """Could replacing a string inside a value make it fail ``schema``? (Conservative: anywhere in it.)"""
    if depth > 64:
        return True
    if isinstance(schema, dict):
        if _STRING_CONSTRAINTS.intersection(schema):
            return True
        return any(_constrains_strings(v, depth + 1) for v in schema.values())
    if isinstance(schema, list):
        return any(_constrains_strings(v, depth + 1) for v in schema)
    return False


@dataclass
class ResponseFilter:
    """Rewrites what comes back: listings to the visible tools, tool results redacted.

    ``mode`` tells the driver how to feed it. ``pass``: relay bytes
    untouched. ``json``: buffer the whole body, then call :meth:`filter_json`.
    ``sse``: call :meth:`feed` per chunk and :meth:`end` at the end; events
    that need no change pass byte for byte. ``redactions`` counts
    replacements per pattern name; ``withheld`` counts results whose
    ``structuredContent`` was dropped (see the module docstring).
    """

    mode: Literal["pass", "json", "sse"]
    visible: Callable[[Any, str], bool]
    max_bytes: int
    redactor: Redactor | None = None
    tool_calls: Mapping[Any, str] = field(default_factory=dict)
    schemas: dict[str, Any] = field(default_factory=dict)
    max_schemas: int = 10_000
    hidden: int = 0
    dropped_events: int = 0
    withheld: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    _parser: SseParser | None = field(default=None, repr=False)

    def filter_json(self, body: bytes) -> bytes:
        if len(body) > self.max_bytes:
            raise FilterError("the upstream's response is too large to filter")
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
        if not isinstance(message, dict) or "method" in message:
            return message, False
        result = message.get("result")
        request_id = message.get("id")
        if isinstance(result, dict) and isinstance(result.get("tools"), list):
            return self._filter_listing(message, result, request_id)
        if self.redactor is None:
            return message, False
        if isinstance(result, dict) and (
            isinstance(result.get("content"), list) or "structuredContent" in result
        ):
            tool = self.tool_calls.get(request_id) if _hashable_id(request_id) else None
            new_result = self._redact_result(result, tool)
            return (message, False) if new_result is None else ({**message, "result": new_result}, True)
        error = message.get("error")
        if isinstance(error, dict) and _hashable_id(request_id) and request_id in self.tool_calls:
            new_error = self._redact_error(error)
            return (message, False) if new_error is None else ({**message, "error": new_error}, True)
        return message, False

    def _filter_listing(
        self, message: dict[str, Any], result: dict[str, Any], request_id: Any
    ) -> tuple[Any, bool]:
        kept = [
            tool
            for tool in result["tools"]
            if isinstance(tool, dict)
            and isinstance(tool.get("name"), str)
            and self.visible(request_id, tool["name"])
        ]
        for tool in kept:
            schema = tool.get("outputSchema")
            if schema is not None and (tool["name"] in self.schemas or len(self.schemas) < self.max_schemas):
                self.schemas[tool["name"]] = schema
        if len(kept) == len(result["tools"]):
            return message, False
        self.hidden += len(result["tools"]) - len(kept)
        return {**message, "result": {**result, "tools": kept}}, True

    def _text(self, text: str, counts: Counter[str]) -> str:
        assert self.redactor is not None
        new, hits = self.redactor.redact_text(text)
        counts.update(hits)
        return new

    def _redact_result(self, result: dict[str, Any], tool: str | None) -> dict[str, Any] | None:
        """The redacted result, or None when nothing matched."""
        counts: Counter[str] = Counter()
        new = dict(result)
        content = result.get("content")
        if isinstance(content, list):
            new["content"] = [self._block(block, counts) for block in content]
        structured_counts: Counter[str] = Counter()
        if "structuredContent" in result:
            new["structuredContent"] = self._json(result["structuredContent"], structured_counts, 0)
        if not counts and not structured_counts:
            return None
        self.redactions.update(counts)
        self.redactions.update(structured_counts)
        if structured_counts and tool is not None and _constrains_strings(self.schemas.get(tool)):
            del new["structuredContent"]
            new["isError"] = True
            notice = "[inwall gateway: structured output withheld after redaction]"
            new["content"] = [*new.get("content", []), {"type": "text", "text": notice}]
            self.withheld += 1
        return new

    def _block(self, block: Any, counts: Counter[str]) -> Any:
        if not isinstance(block, dict):
            return block
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            return {**block, "text": self._text(block["text"], counts)}
        resource = block.get("resource")
        if kind == "resource" and isinstance(resource, dict) and isinstance(resource.get("text"), str):
            return {**block, "resource": {**resource, "text": self._text(resource["text"], counts)}}
        return block

    def _json(self, value: Any, counts: Counter[str], depth: int) -> Any:
        """String values redacted, keys and every other type kept (so the shape stays the same)."""
        if isinstance(value, str):
            return self._text(value, counts)
        if depth > 256:
            raise FilterError("structuredContent nested too deeply to redact")
        if isinstance(value, dict):
            return {k: self._json(v, counts, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self._json(v, counts, depth + 1) for v in value]
        return value

    def _redact_error(self, error: dict[str, Any]) -> dict[str, Any] | None:
        counts: Counter[str] = Counter()
        new = dict(error)
        if isinstance(error.get("message"), str):
            new["message"] = self._text(error["message"], counts)
        if "data" in error:
            new["data"] = self._json(error["data"], counts, 0)
        if not counts:
            return None
        self.redactions.update(counts)
        return new


def _hashable_id(value: Any) -> bool:
    return value is None or is_request_id(value)


def _denied_result(request_id: Any) -> dict[str, Any]:
    """A Cedar denial, as the control plane words its own: a tool error that says only that."""
    result = {"content": [{"type": "text", "text": DENIAL_TEXT}], "isError": True}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _take_token(raw: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The identity token in ``params._meta`` and the message without it (the same object if none)."""
    params = raw.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(params, dict) or not isinstance(meta, dict) or IDENTITY_META_KEY not in meta:
        return None, raw
    token = meta[IDENTITY_META_KEY]
    if not isinstance(token, str) or not token:
        raise _Refuse(
            400, INVALID_PARAMS, f"_meta[{IDENTITY_META_KEY!r}] must be a token string", raw.get("id")
        )
    rest = {k: v for k, v in meta.items() if k != IDENTITY_META_KEY}
    new_params = {k: v for k, v in params.items() if k != "_meta"}
    if rest:
        new_params["_meta"] = rest
    return token, {**raw, "params": new_params}


def _note(message_id: Any, verified: VerifiedIdentity | None) -> IdentityNote:
    if verified is None:
        return IdentityNote(message_id, "anonymous")
    return IdentityNote(
        message_id,
        "verified",
        caller=verified.identity.user_id,
        kind=verified.identity.kind,
        session_id=verified.session_id or None,
        tool_use_id=verified.tool_use_id,
    )


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
