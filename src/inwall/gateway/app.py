"""The gateway's ASGI app: the Host's leftmost label picks a route, the perimeter guards it.

One app serves every tunnel connection (TN's ``TunnelConnector`` calls it once
per h2 stream) and can also run under uvicorn for tests, so it owns its
resources in :meth:`Gateway.running` (entered by the program, or by the ASGI
lifespan when a server sends one): the upstream HTTP clients and the stdio
bridges with their children, and the watch that hot-reloads the perimeter's
Cedar policy.

From the config it assembles the perimeter: the allow/deny lists and, with
``[policy]``, the Cedar policy (both must allow; see :mod:`inwall.gateway.cedar`),
the identity check of ``[identity]`` (:mod:`inwall.gateway.identity`) and the
redaction of ``[redact]``.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import httpx2

from inwall.audit import AuditLog
from inwall.gateway._asgi import (
    ASGIApp,
    ASGIReceive,
    ASGISend,
    Scope,
    header_value,
    read_body,
    send_json,
    send_text,
)
from inwall.gateway._jsonrpc import (
    INTERNAL_ERROR,
    METHOD_NOT_FOUND,
    StrictJSONError,
    error_body,
    loads_strict,
)
from inwall.gateway.cedar import AllOf, CedarDecider
from inwall.gateway.config import GatewayConfig, HttpRoute
from inwall.gateway.identity import CallerIdentity
from inwall.gateway.mcp_policy import Decider, PerimeterPolicy, ToolListDecider
from inwall.gateway.netguard import GuardedTransport, Resolver
from inwall.gateway.perimeter import AuditSink, LogAuditSink, Perimeter
from inwall.gateway.stdio import StdioBridge
from inwall.gateway.upstream import HttpUpstream
from inwall.governance import PolicyEngine, PolicyFile

__all__ = ["Gateway"]

log = logging.getLogger(__name__)


class Gateway:
    """ASGI app for the private side of a tunnel.

    ``decider`` replaces the config's allow/deny lists and Cedar policy;
    ``identity`` replaces the ``[identity]`` check (default: built from the
    config, loading the pinned public key; ConfigError when it cannot);
    ``audit`` is an :class:`AuditLog` or any :class:`AuditSink` (None: no audit,
    for tests only); ``resolver`` replaces DNS for the upstream guard. A
    ``[policy]`` file that is missing or invalid raises ConfigError here.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        decider: Decider | None = None,
        identity: CallerIdentity | None = None,
        audit: AuditLog | AuditSink | None = None,
        resolver: Resolver | None = None,
        digest_key: bytes | None = None,
    ) -> None:
        self.config = config
        self.policy_file: PolicyFile | None = None
        self.policy_reloads = 0
        self.policy_rejections = 0
        self._policy_changed = anyio.Event()
        if config.policy is not None:
            self.policy_file = PolicyFile(
                config.policy.file, on_error=self._policy_rejected, on_reload=self._policy_reloaded
            )
            log.info("perimeter %s", self.policy_file.engine.describe())
        self.policy = PerimeterPolicy(
            decider or self._decider(),
            identity=identity or CallerIdentity.from_config(config.identity),
            redactor=config.redactor,
            redacted_routes=config.redacted_routes(),
            digest_key=digest_key,
        )
        sink = LogAuditSink(audit) if isinstance(audit, AuditLog) else audit
        self.perimeter = Perimeter(self.policy, audit=sink, max_request_bytes=config.max_request_bytes)
        log.info("perimeter %s", "; ".join(f"{k}: {v}" for k, v in self.describe().items()))
        self._audit = sink
        self._resolver = resolver
        self._backends: dict[str, ASGIApp] = {}
        self.stdio: dict[str, StdioBridge] = {
            name: StdioBridge(route, max_message_bytes=64 * 1024 * 1024)
            for name, route in config.stdio.items()
        }
        self._running = False
        self.in_flight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._streams: set[anyio.CancelScope] = set()

    def _decider(self) -> Decider:
        lists = ToolListDecider(self.config.tool_rules())
        policy_file, policy = self.policy_file, self.config.policy
        if policy_file is None or policy is None:
            return lists
        identity = self.config.identity
        cedar = CedarDecider(
            lambda: policy_file.engine,
            tunnel_id=identity.tunnel_id if identity is not None else "",
            anonymous_listing=policy.anonymous_listing,
        )
        return AllOf(lists, cedar)

    def describe(self) -> dict[str, str]:
        """The perimeter's settings in a few words, for the startup log and the audit log."""
        identity = self.policy.identity
        if not identity.enabled:
            who = "not checked (no [identity]): every caller is anonymous"
        else:
            who = "required on every tools/call" if identity.required else "checked when present"
        redactor = self.config.redactor
        return {
            "identity": who,
            "policy": str(self.config.policy.file) if self.config.policy is not None else "none",
            "redact": ", ".join(redactor.names) if redactor is not None else "off",
        }

    @property
    def engine(self) -> PolicyEngine | None:
        """The perimeter's Cedar policy in force (None without ``[policy]``)."""
        return self.policy_file.engine if self.policy_file is not None else None

    def _policy_reloaded(self, engine: PolicyEngine) -> None:
        self.policy_reloads += 1
        self._policy_notify()

    def _policy_rejected(self, message: str) -> None:
        # PolicyFile has logged it (logger inwall.governance); the old policy stays in force.
        self.policy_rejections += 1
        self._policy_notify()

    def _policy_notify(self) -> None:
        self._policy_changed.set()
        self._policy_changed = anyio.Event()

    async def wait_policy_change(self) -> None:
        """Return at the next reload or rejection of the policy file (for tests and status)."""
        await self._policy_changed.wait()

    def reload_policy(self) -> bool:
        """Apply the policy file if it changed and is valid (what the watch does every interval).

        A broken edit is rejected with one log line (logger ``inwall.governance``)
        and the policy in force stays in force.
        """
        return self.policy_file.maybe_reload() if self.policy_file is not None else False

    # -- lifetime ---------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Open the upstream clients and the stdio bridges; on exit stop every stdio child."""
        if self._running:
            raise RuntimeError("this Gateway is already running")
        async with AsyncExitStack() as stack:
            for name, route in self.config.routes.items():
                client = _client(route, self.config, self._resolver)
                stack.push_async_callback(_close_client, client)
                self._backends[name] = HttpUpstream(
                    route, client, max_request_bytes=self.config.max_request_bytes
                )
            for name, bridge in self.stdio.items():
                await stack.enter_async_context(bridge.running())
                self._backends[name] = bridge
            if self.policy_file is not None and self.config.policy is not None:
                watcher = await stack.enter_async_context(anyio.create_task_group())
                watcher.start_soon(self.policy_file.watch, self.config.policy.reload_interval_s)
                stack.callback(watcher.cancel_scope.cancel)
            self._running = True
            try:
                yield self
            finally:
                self._running = False
                self._backends.clear()

    async def wait_idle(self) -> None:
        """Return once no request is in flight (used to drain)."""
        await self._idle.wait()

    def end_streams(self) -> None:
        """End every GET stream (server-to-client notifications): they carry no call and never end
        on their own, so a drain ends them and clients reopen them through another connection."""
        for scope in list(self._streams):
            scope.cancel()

    def stdio_child_pids(self) -> list[int]:
        return [pid for bridge in self.stdio.values() for pid in bridge.child_pids()]

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            return
        self.in_flight += 1
        self._idle = anyio.Event() if self.in_flight == 1 else self._idle
        try:
            await self._http(scope, receive, send)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _http(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        route = self.route_for_host(header_value(scope, "host") or "")
        backend = self._backends.get(route) if route is not None else None
        if route is None or backend is None:
            await self._unknown_route(scope, receive, send, route)
            return
        if scope["method"] != "GET":
            await self.perimeter.handle(scope, receive, send, route=route, backend=backend)
            return
        with anyio.CancelScope() as stream:
            self._streams.add(stream)
            try:
                await self.perimeter.handle(scope, receive, send, route=route, backend=backend)
            finally:
                self._streams.discard(stream)

    def route_for_host(self, host: str) -> str | None:
        """``<route>.<tunnel domain>[:port]`` → ``route``; an IP literal or a foreign domain → None."""
        name = host.strip().lower()
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        name = name.rstrip(".")
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            return None
        label, dot, rest = name.partition(".")
        if self.config.domain is not None and (not dot or rest != self.config.domain):
            return None
        return label if label in self.config.routes or label in self.config.stdio else None

    async def _unknown_route(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend, route: str | None
    ) -> None:
        host = header_value(scope, "host") or ""
        body = (
            await read_body(receive, limit=self.config.max_request_bytes)
            if scope["method"] == "POST"
            else b""
        )
        message = f"no route for host {host!r} on this gateway"
        request_id: Any = None
        is_jsonrpc = False
        try:
            parsed = loads_strict(body or b"")
            is_jsonrpc = isinstance(parsed, dict) and parsed.get("jsonrpc") == "2.0"
            request_id = parsed.get("id") if is_jsonrpc else None
        except StrictJSONError:
            pass
        if not self._running:
            await send_json(send, 503, error_body(request_id, INTERNAL_ERROR, "the gateway is not running"))
        elif is_jsonrpc:
            await send_json(send, 404, error_body(request_id, METHOD_NOT_FOUND, message))
        else:
            await send_text(send, 404, message + "\n")
        if self._audit is not None:
            await self._audit.record(
                "gateway.request",
                route=None,
                host=host[:255],
                http_method=scope["method"],
                path=scope.get("path", ""),
                outcome="unknown_route" if self._running else "not_running",
                status=404 if self._running else 503,
            )

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        if self._running:  # the program already runs it; a server's lifespan just observes
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        try:
            async with self.running():
                await send({"type": "lifespan.startup.complete"})
                await receive()
        except Exception as exc:
            log.exception("gateway lifespan failed")
            await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def _client(route: HttpRoute, config: GatewayConfig, resolver: Resolver | None) -> httpx2.AsyncClient:
    ssl_context = ssl.create_default_context(cafile=str(route.ca_file) if route.ca_file else None)
    transport = GuardedTransport(config.allowed_ips, ssl_context=ssl_context, resolver=resolver)
    return httpx2.AsyncClient(
        transport=transport,
        timeout=httpx2.Timeout(connect=config.upstream_connect_timeout_s, read=None, write=60.0, pool=30.0),
        follow_redirects=False,
        trust_env=False,
    )


async def _close_client(client: httpx2.AsyncClient) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        await client.aclose()
