"""The control plane's end of the tunnels: accepts gateways, carries requests to them.

Mount :meth:`TunnelEdge.websocket_endpoint` at ``/v1/tunnels/connect``, run
:meth:`TunnelEdge.run` in the server's task group, and give the MCP client
``httpx2.AsyncClient(transport=edge.transport(fallback=...))``. A request whose host is
a tunnel's domain or one of its subdomains goes through one of that tunnel's gateway
connections (the least loaded) and nowhere else; with no gateway connected it fails
within ``connect_wait_s`` with a message that says why.

Each gateway connection is authenticated by its tunnel token on the upgrade, then the
edge opens the inner TLS and verifies the gateway's certificate against the tunnel's
registered CAs with ``server_hostname`` = the tunnel's domain. Tokens are never logged
or audited; the audit records tunnel ids, peers and outcomes.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import anyio
import httpx2
from anyio.abc import TaskStatus
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from inwall.audit import AuditLog
from inwall.errors import InwallError, LocalProtocolError
from inwall.tunnel._client import ClientConnection, Refused
from inwall.tunnel.errors import (
    GatewayCertificateRejected,
    NoGateway,
    NoTrustedCertificate,
    TunnelClosed,
    TunnelProtocolError,
)
from inwall.tunnel.link import (
    CLOSE_GOING_AWAY,
    CLOSE_POLICY,
    DEFAULT_MAX_MESSAGE_BYTES,
    SUBPROTOCOL,
    LinkLimits,
)
from inwall.tunnel.links import StarletteLink
from inwall.tunnel.mux import MuxSettings
from inwall.tunnel.tls import TLSEndpoint, edge_client_context

__all__ = ["TunnelAuth", "TunnelDirectory", "TunnelEdge"]

logger = logging.getLogger("inwall.tunnel")

_MAX_TOKEN_LEN = 4096
_MAX_CACHED_DOMAINS = 10_000
_MAX_REVOCATIONS = 10_000
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class TunnelAuth:
    tunnel_id: str
    domain: str
    token_id: str


class TunnelDirectory(Protocol):
    """What the edge needs from the control plane's database (the lead implements it)."""

    async def authenticate(self, token: str) -> TunnelAuth | None:
        """The tunnel this token opens, or None (unknown, rotated, or the tunnel is archived)."""
        ...

    async def trusted_ca_pems(self, tunnel_id: str) -> list[str]:
        """The tunnel's non-archived CA certificates, PEM."""
        ...

    async def tunnel_for_host(self, host: str) -> TunnelAuth | None:
        """The tunnel whose domain is ``host`` or a parent of it, connected or not."""
        ...


class _Entry:
    """One accepted gateway connection and its scheduled close, if any."""

    __slots__ = ("auth", "close_at", "code", "conn", "earlier", "opened", "peer", "reason", "scheduled")

    def __init__(self, conn: ClientConnection, auth: TunnelAuth, peer: str) -> None:
        self.conn = conn
        self.auth = auth
        self.peer = peer
        self.opened = time.monotonic()
        self.close_at: float | None = None
        self.reason = ""
        self.code = CLOSE_POLICY
        self.scheduled = anyio.Event()
        self.earlier = anyio.Event()

    def schedule_close(self, at: float, reason: str, code: int = CLOSE_POLICY) -> None:
        if self.close_at is not None and self.close_at <= at:
            return
        self.close_at = at
        self.reason = reason
        self.code = code
        self.scheduled.set()
        self.earlier.set()
        self.earlier = anyio.Event()


class TunnelEdge:
    """Accepts gateway connections and routes tunnel-host requests through them."""

    def __init__(
        self,
        directory: TunnelDirectory,
        *,
        ping_interval_s: float = 5.0,
        dead_after_s: float = 15.0,
        connect_wait_s: float = 3.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        audit: AuditLog | None = None,
        drain_timeout_s: float = 30.0,
        mux_settings: MuxSettings | None = None,
        max_connections_per_tunnel: int = 32,
    ) -> None:
        LinkLimits(max_message_bytes)  # validates
        if dead_after_s <= ping_interval_s:
            raise ValueError("dead_after_s must exceed ping_interval_s")
        self._directory = directory
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        self._connect_wait_s = connect_wait_s
        self._max_message_bytes = max_message_bytes
        self._audit = audit
        self._drain_timeout_s = drain_timeout_s
        self._mux_settings = mux_settings or MuxSettings()
        self._max_connections = max_connections_per_tunnel
        self._running = False
        self._entries: dict[str, set[_Entry]] = {}
        self._pool: dict[str, list[ClientConnection]] = {}
        self._arrivals: dict[str, anyio.Event] = {}
        self._domains: dict[str, TunnelAuth] = {}
        self._revoked: dict[tuple[str, str], tuple[float, float]] = {}
        self._last_failure: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._pool_changed = anyio.Event()

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; on the way out, drain every gateway connection (bounded)."""
        if self._running:
            raise LocalProtocolError("this TunnelEdge is already running")
        self._running = True
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._running = False
            with anyio.CancelScope(shield=True):
                await self._close_all("edge shutting down", min(self._drain_timeout_s, 5.0))

    async def _close_all(self, reason: str, grace_s: float) -> None:
        entries = [e for group in self._entries.values() for e in group]
        now = anyio.current_time()
        for entry in entries:
            entry.schedule_close(now, reason, CLOSE_GOING_AWAY)
        with anyio.move_on_after(grace_s + 1.0):
            for entry in entries:
                await entry.conn.closed.wait()
        for entry in entries:
            entry.conn.close(code=CLOSE_GOING_AWAY, reason=reason)

    # ---- the WebSocket endpoint -----------------------------------------------------

    async def websocket_endpoint(self, websocket: WebSocket) -> None:
        """Starlette WebSocket route for ``/v1/tunnels/connect``."""
        peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else "unknown"
        if not self._running:
            await _deny(websocket, 503, "api_error", "the tunnel edge is not running")
            return
        token = _bearer(websocket.headers.get("authorization"))
        try:
            auth = await self._directory.authenticate(token) if token else None
        except InwallError:
            logger.exception("tunnel authentication failed for a gateway at %s", peer)
            await _deny(websocket, 503, "api_error", "tunnel authentication is unavailable; retry later")
            return
        if auth is None:
            await self._record("tunnel.connection.refused", peer=peer, reason="invalid tunnel token")
            await _deny(websocket, 401, "authentication_error", "invalid tunnel token")
            return
        if SUBPROTOCOL not in websocket.scope.get("subprotocols", []):
            await _deny(
                websocket, 400, "invalid_request_error", f"this edge speaks the {SUBPROTOCOL} subprotocol"
            )
            return
        if len(self._entries.get(auth.tunnel_id, ())) >= self._max_connections:
            await self._record(
                "tunnel.connection.refused", tunnel_id=auth.tunnel_id, peer=peer, reason="too many"
            )
            await _deny(
                websocket,
                429,
                "rate_limit_error",
                f"the tunnel already has {self._max_connections} connections",
            )
            return
        try:
            pems = await self._directory.trusted_ca_pems(auth.tunnel_id)
        except InwallError:
            logger.exception("cannot read the CA certificates of tunnel %s", auth.tunnel_id)
            await _deny(websocket, 503, "api_error", "the tunnel's certificates are unavailable; retry later")
            return
        try:
            context = edge_client_context(pems)
        except ValueError as exc:
            message = (
                "the tunnel has no registered CA certificate; register the CA that signs the gateway's "
                f"certificate with POST /v1/tunnels/{auth.tunnel_id}/certificates"
                if not pems
                else f"the tunnel's registered CA certificates are unusable: {exc}"
            )
            self._last_failure[auth.tunnel_id] = message
            await self._record(
                "tunnel.connection.refused", tunnel_id=auth.tunnel_id, peer=peer, reason=message
            )
            await _deny(websocket, 409, "invalid_request_error", message)
            return
        self._domains[auth.domain] = auth
        await websocket.accept(subprotocol=SUBPROTOCOL)
        label = f"{auth.tunnel_id}/c{next(self._ids)}"
        await self._record(
            "tunnel.connection.accepted", tunnel_id=auth.tunnel_id, connection=label, peer=peer
        )
        conn = ClientConnection(
            StarletteLink(websocket, max_message_bytes=self._max_message_bytes),
            TLSEndpoint(context, server_side=False, server_hostname=auth.domain),
            settings=self._mux_settings,
            ping_interval_s=self._ping_interval_s,
            dead_after_s=self._dead_after_s,
            max_message_bytes=self._max_message_bytes,
            label=label,
            on_ready=partial(self._on_ready, auth),
            on_unusable=partial(self._on_unusable, auth),
        )
        entry = _Entry(conn, auth, peer)
        self._entries.setdefault(auth.tunnel_id, set()).add(entry)
        revoked = self._revoked.get((auth.tunnel_id, auth.token_id))
        if revoked is not None:
            entry.schedule_close(revoked[1], "token revoked")
        outcome = "closed"
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._close_when_scheduled, entry)
                try:
                    await conn.run()
                except GatewayCertificateRejected as exc:
                    outcome = str(exc)
                    self._last_failure[auth.tunnel_id] = outcome
                    logger.warning("tunnel %s: %s (gateway at %s)", auth.tunnel_id, outcome, peer)
                except TunnelProtocolError as exc:
                    outcome = f"protocol error: {exc}"
                    logger.warning("tunnel connection %s closed: %s", label, outcome)
                except TunnelClosed as exc:
                    outcome = str(exc)
                    logger.info("tunnel connection %s ended: %s", label, outcome)
                finally:
                    tg.cancel_scope.cancel()
        finally:
            group = self._entries.get(auth.tunnel_id)
            if group is not None:
                group.discard(entry)
                if not group:
                    del self._entries[auth.tunnel_id]
            self._on_unusable(auth, conn)
            with anyio.CancelScope(shield=True):
                await self._record(
                    "tunnel.connection.closed",
                    tunnel_id=auth.tunnel_id,
                    connection=label,
                    peer=peer,
                    outcome=entry.reason or outcome,
                    duration_s=round(time.monotonic() - entry.opened, 3),
                )

    async def _close_when_scheduled(self, entry: _Entry) -> None:
        await entry.scheduled.wait()
        assert entry.close_at is not None
        while (delay := entry.close_at - anyio.current_time()) > 0:
            with anyio.move_on_after(delay):
                await entry.earlier.wait()
        entry.conn.drain(reason=entry.reason, code=entry.code)
        with anyio.move_on_after(self._drain_timeout_s):
            await entry.conn.closed.wait()
        entry.conn.close(code=entry.code, reason=entry.reason)

    def _on_ready(self, auth: TunnelAuth, conn: ClientConnection) -> None:
        self._pool.setdefault(auth.tunnel_id, []).append(conn)
        self._last_failure.pop(auth.tunnel_id, None)
        arrival = self._arrivals.pop(auth.tunnel_id, None)
        if arrival is not None:
            arrival.set()
        self._signal_pool()
        logger.info("tunnel connection %s is up", conn.label)

    def _on_unusable(self, auth: TunnelAuth, conn: ClientConnection) -> None:
        pool = self._pool.get(auth.tunnel_id)
        if pool is not None and conn in pool:
            pool.remove(conn)
            if not pool:
                del self._pool[auth.tunnel_id]
            self._signal_pool()

    def _signal_pool(self) -> None:
        self._pool_changed.set()
        self._pool_changed = anyio.Event()

    # ---- control --------------------------------------------------------------------

    def connections(self, tunnel_id: str) -> int:
        """Live gateway connections of the tunnel that take new requests."""
        return len(self._pool.get(tunnel_id, ()))

    async def wait_connections(self, tunnel_id: str, predicate: Callable[[int], bool]) -> int:
        """Wait until ``predicate(connections(tunnel_id))`` holds; returns the count.

        For health checks, the demo and tests: an event, not a poll. Bound it yourself
        (``anyio.fail_after``).
        """
        while not predicate(count := self.connections(tunnel_id)):
            await self._pool_changed.wait()
        return count

    async def revoke_token(self, tunnel_id: str, token_id: str, *, grace_s: float) -> None:
        """Close connections opened with this token after ``grace_s`` (in-flight streams drain).

        Call it after the token stopped authenticating (rotation, archival). Returns at
        once; the closing happens in each connection's own task. Connections being
        opened with the token at this moment are caught too.
        """
        now = anyio.current_time()
        deadline = now + max(grace_s, 0.0)
        if len(self._revoked) >= _MAX_REVOCATIONS:
            horizon = now - 3600
            self._revoked = {k: v for k, v in self._revoked.items() if v[0] > horizon}
        self._revoked[(tunnel_id, token_id)] = (now, deadline)
        affected = 0
        for entry in self._entries.get(tunnel_id, ()):
            if entry.auth.token_id == token_id:
                entry.schedule_close(deadline, "token revoked")
                affected += 1
        await self._record("tunnel.token.revoked", tunnel_id=tunnel_id, connections=affected, grace_s=grace_s)

    async def disconnect_tunnel(
        self, tunnel_id: str, *, grace_s: float = 0.0, reason: str = "tunnel disconnected"
    ) -> None:
        """Close every connection of the tunnel after ``grace_s`` (e.g. after a CA was archived)."""
        deadline = anyio.current_time() + max(grace_s, 0.0)
        for entry in self._entries.get(tunnel_id, ()):
            entry.schedule_close(deadline, reason)

    # ---- routing --------------------------------------------------------------------

    def transport(self, *, fallback: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncBaseTransport:
        """An httpx2 transport: tunnel hosts through the tunnel, other hosts to ``fallback``.

        Without ``fallback`` a host under no tunnel domain raises ``httpx2.ConnectError``.
        """
        return _EdgeTransport(self, fallback)

    async def tunnel_for_host(self, host: str) -> TunnelAuth | None:
        """The tunnel that owns ``host`` (cached; tunnel domains are never reused)."""
        host = host.lower().rstrip(".")
        labels = host.split(".")
        for i in range(len(labels)):
            known = self._domains.get(".".join(labels[i:]))
            if known is not None:
                return known
        found = await self._directory.tunnel_for_host(host)
        if found is None:
            return None
        domain = found.domain.lower().rstrip(".")
        if host != domain and not host.endswith("." + domain):
            raise LocalProtocolError(
                f"the directory mapped {host!r} to a tunnel whose domain does not cover it"
            )
        if len(self._domains) >= _MAX_CACHED_DOMAINS:
            self._domains.clear()
        self._domains[domain] = found
        return found

    def _pick(self, tunnel_id: str) -> ClientConnection | None:
        conns = [c for c in self._pool.get(tunnel_id, ()) if c.usable]
        if not conns:
            return None
        scheduled = {id(e.conn) for e in self._entries.get(tunnel_id, ()) if e.close_at is not None}
        fresh = [c for c in conns if id(c) not in scheduled] or conns
        best = min(fresh, key=lambda c: (c.active, c.assigned))
        return best

    async def _acquire(self, auth: TunnelAuth, request: httpx2.Request) -> ClientConnection:
        conn = self._pick(auth.tunnel_id)
        if conn is not None:
            return conn
        tunnel_id = auth.tunnel_id
        try:
            registered = await self._directory.trusted_ca_pems(tunnel_id)
        except InwallError as exc:
            raise httpx2.ConnectError(
                f"tunnel {tunnel_id}: certificates unavailable: {exc}", request=request
            ) from exc
        if not registered:
            message = (
                f"tunnel {tunnel_id} has no registered CA certificate, so it carries no traffic; "
                f"register one with POST /v1/tunnels/{tunnel_id}/certificates"
            )
            raise httpx2.ConnectError(message, request=request) from NoTrustedCertificate(message)
        with anyio.move_on_after(self._connect_wait_s):
            while (conn := self._pick(tunnel_id)) is None:
                arrival = self._arrivals.get(tunnel_id)
                if arrival is None:
                    arrival = self._arrivals[tunnel_id] = anyio.Event()
                await arrival.wait()
            return conn
        detail = self._last_failure.get(tunnel_id)
        message = f"tunnel {tunnel_id} has no connected gateway"
        if detail:
            message += f" (last connection attempt: {detail})"
        raise httpx2.ConnectError(message, request=request) from NoGateway(message)

    async def _route(self, auth: TunnelAuth, request: httpx2.Request) -> httpx2.Response:
        try:
            _ = request.content  # raises for a one-shot streamed body
            replayable = True
        except httpx2.RequestNotRead:
            replayable = False
        for attempt in range(1, _ATTEMPTS + 1):
            conn = await self._acquire(auth, request)
            try:
                return await conn.request(request)
            except Refused as exc:
                if not (replayable or exc.fresh):
                    raise httpx2.RemoteProtocolError(
                        f"tunnel {auth.tunnel_id}: a gateway refused a request whose body cannot be replayed",
                        request=request,
                    ) from exc
                if attempt == _ATTEMPTS:
                    raise httpx2.ConnectError(
                        f"tunnel {auth.tunnel_id}: gateways kept refusing the request ({exc})",
                        request=request,
                    ) from exc
                logger.debug("tunnel %s: stream refused on %s, retrying", auth.tunnel_id, conn.label)
        raise AssertionError("unreachable")

    async def _record(self, kind: str, **fields: Any) -> None:
        if self._audit is not None:
            await anyio.to_thread.run_sync(partial(self._audit.append, kind, **fields))


class _EdgeTransport(httpx2.AsyncBaseTransport):
    def __init__(self, edge: TunnelEdge, fallback: httpx2.AsyncBaseTransport | None) -> None:
        self._edge = edge
        self._fallback = fallback

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        try:
            auth = await self._edge.tunnel_for_host(host)
        except InwallError as exc:
            raise httpx2.ConnectError(
                f"cannot tell whether {host!r} is a tunnel host: {exc}", request=request
            ) from exc
        if auth is None:
            if self._fallback is not None:
                return await self._fallback.handle_async_request(request)
            raise httpx2.ConnectError(f"{host!r} is not under any tunnel domain", request=request)
        return await self._edge._route(auth, request)

    async def aclose(self) -> None:
        if self._fallback is not None:
            await self._fallback.aclose()


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN_LEN:
        return None
    return token


async def _deny(websocket: WebSocket, status: int, error_type: str, message: str) -> None:
    """Refuse the upgrade with an HTTP status and an Anthropic-style error body."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        body = {"type": "error", "error": {"type": error_type, "message": message}}
        await websocket.send_denial_response(JSONResponse(body, status_code=status))
    else:
        await websocket.close(code=CLOSE_POLICY, reason=message[:120])
