"""The anyio/ASGI driver of the MCP policy: read the request, decide, relay, filter, audit.

Everything protocol-shaped is decided in :mod:`mcp_policy` (sans-I/O); this
module only moves bytes between the caller, the policy and the route's backend
(an HTTP upstream or a stdio bridge, both plain ASGI apps) and writes one
audit record per request, whatever its outcome. The backend gets the body the
policy chose (identity tokens stripped from ``_meta``) and never the
``X-Inwall-Identity`` header. The audit record names the caller the token
verified (``identity``), never the token, and counts redactions per pattern
(``redactions: [{pattern, count}]``), never the values.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, NoReturn, Protocol

import anyio

from inwall.audit import AuditLog
from inwall.gateway._asgi import (
    ASGIApp,
    ASGIReceive,
    ASGISend,
    Message,
    Scope,
    header_pairs,
    read_body,
    send_json,
)
from inwall.gateway._jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, error_body
from inwall.gateway.identity import IDENTITY_HEADER
from inwall.gateway.mcp_policy import (
    FilterError,
    PerimeterPolicy,
    RequestVerdict,
    ResponseFilter,
)
from inwall.gateway.upstream import UpstreamError

__all__ = ["AuditSink", "LogAuditSink", "Perimeter"]

log = logging.getLogger(__name__)

_IDENTITY_HEADER_BYTES = IDENTITY_HEADER.encode()


class AuditSink(Protocol):
    async def record(self, kind: str, **fields: Any) -> None: ...


class LogAuditSink:
    """Appends to the hash-chained :class:`inwall.audit.AuditLog` off the event loop (it fsyncs)."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def record(self, kind: str, **fields: Any) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(functools.partial(self.log.append, kind, **fields))


class _Abandon(Exception):
    pass


class Perimeter:
    def __init__(
        self,
        policy: PerimeterPolicy,
        *,
        audit: AuditSink | None = None,
        max_request_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.policy = policy
        self.audit = audit
        self.max_request_bytes = max_request_bytes

    async def handle(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, *, route: str, backend: ASGIApp
    ) -> None:
        started_at = anyio.current_time()
        method = scope["method"]
        record: dict[str, Any] = {"route": route, "http_method": method, "path": scope.get("path", "")}
        out = _Outbound(send)
        try:
            await self._handle(scope, receive, out, route=route, backend=backend, record=record)
        except BaseException as exc:
            record.setdefault("outcome", "aborted")
            record.setdefault("reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            record["status"] = out.status
            record["bytes_out"] = out.bytes
            record["duration_ms"] = round((anyio.current_time() - started_at) * 1000, 3)
            if self.audit is not None:
                await self.audit.record("gateway.request", **record)

    async def _handle(
        self,
        scope: Scope,
        receive: ASGIReceive,
        out: _Outbound,
        *,
        route: str,
        backend: ASGIApp,
        record: dict[str, Any],
    ) -> None:
        method = scope["method"]
        body = await read_body(receive, limit=self.max_request_bytes)
        if body is None:
            record.update(outcome="refused", reason="request body too large or caller went away")
            await send_json(
                out, 413, error_body(None, INVALID_REQUEST, "the request body is over the gateway's limit")
            )
            return
        record["bytes_in"] = len(body)
        verdict = self.policy.check(route, method, header_pairs(scope), body)
        _describe(record, verdict)
        if not verdict.forward:
            assert verdict.reply is not None
            await send_json(out, verdict.reply.status, verdict.reply.body)
            if verdict.outcome == "denied":
                log.info("route %s: denied %s", route, record.get("tools"))
            elif verdict.identities and any(n.outcome == "refused" for n in verdict.identities):
                log.warning("route %s: %s", route, verdict.refusal)
            return
        first_id = verdict.messages[0].id if len(verdict.messages) == 1 else None
        forward_body = body if verdict.body is None else verdict.body
        # The token is the caller's credential for this call, not the MCP server's business.
        scope = {
            **scope,
            "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != _IDENTITY_HEADER_BYTES],
        }

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": forward_body, "more_body": False}
            return await receive()

        filtered = _FilteredSend(
            self.policy,
            out,
            route=route,
            method=method,
            verdict=verdict,
            request_id=first_id,
        )
        try:
            await backend(scope, replay, filtered)
        except _Abandon:
            pass
        except UpstreamError as exc:
            record.update(outcome="error", reason=str(exc))
            if out.started:
                raise
            await send_json(out, exc.status, error_body(first_id, INTERNAL_ERROR, str(exc)))
            return
        if filtered.error is not None:
            record.update(outcome="error", reason=filtered.error)
        if filtered.filter is not None and filtered.filter.hidden:
            record["hidden_tools"] = filtered.filter.hidden
        if filtered.filter is not None and filtered.filter.dropped_events:
            record["dropped_events"] = filtered.filter.dropped_events
        if filtered.filter is not None and filtered.filter.redactions:
            # A list, not {name: count}: the audit log blanks values under secret-looking keys,
            # and pattern names ("api_keys", a custom "token") are exactly such keys.
            record["redactions"] = [
                {"pattern": name, "count": count}
                for name, count in sorted(filtered.filter.redactions.items())
            ]
        if filtered.filter is not None and filtered.filter.withheld:
            record["structured_content_withheld"] = filtered.filter.withheld


def _describe(record: dict[str, Any], verdict: RequestVerdict) -> None:
    record["outcome"] = verdict.outcome
    if verdict.era is not None:
        record["era"] = verdict.era.value
    if verdict.messages:
        record["mcp"] = [
            {
                k: v
                for k, v in (("kind", m.kind), ("method", m.method), ("id", m.id), ("tool", m.tool))
                if v is not None
            }
            for m in verdict.messages
        ]
    digests = [m.input_digest for m in verdict.messages if m.input_digest is not None]
    if digests:
        record["input_digests"] = digests
    if verdict.decisions:
        record["tools"] = [
            {"tool": tool, "allowed": d.allowed, "rule": d.rule, **({"reason": d.reason} if d.reason else {})}
            for tool, d in verdict.decisions
        ]
    if verdict.refusal:
        record["reason"] = verdict.refusal
    if verdict.identities:
        record["identity"] = [note.record() for note in verdict.identities]
        callers = [n.caller for n in verdict.identities if n.caller is not None]
        if callers:
            record["caller"] = callers[0]


class _Outbound:
    """The caller's ``send``, counting what went out."""

    def __init__(self, send: ASGISend) -> None:
        self._send = send
        self.status: int | None = None
        self.bytes = 0
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
        elif message["type"] == "http.response.body":
            self.bytes += len(message.get("body", b""))
        await self._send(message)


class _FilteredSend:
    """Stands between the backend and the caller, applying the response filter the policy chose."""

    def __init__(
        self,
        policy: PerimeterPolicy,
        out: _Outbound,
        *,
        route: str,
        method: str,
        verdict: RequestVerdict,
        request_id: Any,
    ) -> None:
        self._policy = policy
        self._route = route
        self._method = method
        self._verdict = verdict
        self._out = out
        self._request_id = request_id
        self._start: Message | None = None
        self._buffer = bytearray()
        self.filter: ResponseFilter | None = None
        self.error: str | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body":
            await self._on_body(message.get("body", b""), bool(message.get("more_body", False)))
        else:
            await self._out(message)

    async def _on_start(self, message: Message) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in message.get("headers", [])}
        try:
            self.filter = self._policy.response_filter(
                self._route,
                self._method,
                self._verdict,
                status=message["status"],
                headers=headers,
            )
        except FilterError as exc:
            await self._refuse(str(exc))
        if self.filter.mode == "pass":
            await self._out(message)
        elif self.filter.mode == "sse":
            stripped = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
            await self._out({**message, "headers": stripped})
        else:
            self._start = message

    async def _on_body(self, chunk: bytes, more: bool) -> None:
        assert self.filter is not None
        if self.filter.mode == "pass":
            await self._out({"type": "http.response.body", "body": chunk, "more_body": more})
            return
        if self.filter.mode == "sse":
            try:
                data = self.filter.feed(chunk)
            except FilterError as exc:
                self.error = str(exc)
                raise UpstreamError(502, str(exc)) from exc
            if not more:
                data += self.filter.end()
            if data or not more:
                await self._out({"type": "http.response.body", "body": data, "more_body": more})
            return
        self._buffer += chunk
        if len(self._buffer) > self.filter.max_bytes:
            await self._refuse("the upstream's response is too large to filter")
        if more:
            return
        try:
            body = self.filter.filter_json(bytes(self._buffer))
        except FilterError as exc:
            await self._refuse(str(exc))
        assert self._start is not None
        headers = [(k, v) for k, v in self._start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self._out({**self._start, "headers": headers})
        await self._out({"type": "http.response.body", "body": body, "more_body": False})

    async def _refuse(self, reason: str) -> NoReturn:
        """Fail closed: the caller gets a 502 instead of a response the gateway could not check."""
        self.error = reason
        log.warning("route %s: %s", self._route, reason)
        await send_json(
            self._out, 502, error_body(self._request_id, INTERNAL_ERROR, f"inwall gateway: {reason}")
        )
        raise _Abandon
