"""The gateway program: keep N tunnel connections up around one :class:`Gateway` app, and drain on stop.

Each connection has its own supervisor: connect (TN's ``TunnelConnector``),
serve until the link dies, wait a full-jitter backoff, reconnect; the backoff
resets once a connection stayed up ``healthy_after_s``. An auth failure (the
edge refused the token: rotated, archived, mistyped) stops that connection's
supervisor, because no retry can fix it; connections still up keep serving (a
rotated token's grace period) until the edge closes them, and the gateway stops
once none is left. A stop request (SIGTERM, SIGINT, :meth:`stop`)
sends GOAWAY on every connection and waits for in-flight requests up to
``drain_timeout_s``, then stops the stdio children and returns.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import random
import signal
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc

from inwall.audit import AuditLog
from inwall.errors import AuthError, ConfigError
from inwall.gateway._asgi import ASGIApp
from inwall.gateway.app import Gateway
from inwall.gateway.backoff import FullJitterBackoff
from inwall.gateway.config import GatewayConfig
from inwall.tunnel import (
    CONNECT_PATH,
    TunnelAuthRejected,
    TunnelConnector,
    gateway_server_context,
    proxy_from_env,
)

__all__ = [
    "Connector",
    "ConnectorFactory",
    "GatewayProgram",
    "server_ssl_context",
    "tunnel_url",
]

log = logging.getLogger(__name__)

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Connector(Protocol):
    """What the program needs from TN's ``TunnelConnector``."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[Any] = ...) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...


class ConnectorFactory(Protocol):
    def __call__(
        self,
        url: str,
        token: str,
        app: ASGIApp,
        server_ssl: ssl.SSLContext,
        *,
        proxy: str | None = None,
        ping_interval_s: float = 5.0,
        dead_after_s: float = 15.0,
        client_ssl: ssl.SSLContext | None = None,
    ) -> Connector: ...


def tunnel_url(base_url: str, *, allow_insecure: bool = False) -> str:
    """``https://host[/prefix]`` → ``wss://host[/prefix]/v1/tunnels/connect``; plain ws only to loopback.

    The tunnel token rides on the upgrade request, so an unencrypted hop is
    refused unless it stays on this machine (or ``allow_insecure`` says so).
    """
    parts = urlsplit(base_url.strip())
    scheme = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ConfigError(f"--base-url {base_url!r} must be an http(s):// or ws(s):// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("--base-url must not carry a query, a fragment or credentials")
    if scheme == "ws" and not allow_insecure and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"--base-url {base_url!r} is neither encrypted nor on loopback: "
            "the tunnel token would travel in the clear (--allow-insecure-ws overrides)"
        )
    path = parts.path.rstrip("/")
    if not path.endswith(CONNECT_PATH):
        path += CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_ssl_context(config: GatewayConfig) -> ssl.SSLContext:
    """The inner-TLS server context (TN's settings: TLS 1.3, ALPN h2) from ``[tls]``."""
    try:
        return gateway_server_context(str(config.tls_cert_file), str(config.tls_key_file))
    except FileNotFoundError as exc:
        raise ConfigError(f"[tls]: {exc.filename}: no such file") from exc
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"[tls]: cannot load the certificate and key: {exc}") from exc


def _default_factory() -> ConnectorFactory:
    factory: ConnectorFactory = TunnelConnector
    return factory


class _UpSignal(anyio.abc.TaskStatus[Any]):
    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback

    def started(self, value: Any = None) -> None:
        self._callback()


class GatewayProgram:
    """``await program.run()``; ``program.stop()`` (or SIGTERM with ``handle_signals``) drains and returns.

    ``run`` raises the connector's AuthError subclass when the edge refused the token.
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        base_url: str,
        token: str,
        gateway: Gateway | None = None,
        audit: AuditLog | None = None,
        connector_factory: ConnectorFactory | None = None,
        client_ssl: ssl.SSLContext | None = None,
        environ: Mapping[str, str] | None = None,
        allow_insecure_ws: bool = False,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        healthy_after_s: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not token:
            raise ConfigError("no tunnel token: pass --tunnel-token or set INWALL_TUNNEL_TOKEN")
        self.config = config
        self.url = tunnel_url(base_url, allow_insecure=allow_insecure_ws)
        self._token = token
        self.audit = audit
        self.gateway = gateway or Gateway(config, audit=audit)
        self._factory = connector_factory
        self._client_ssl = client_ssl
        self._proxy = proxy_from_env(self.url, os.environ if environ is None else environ)
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._healthy_after_s = healthy_after_s
        self._rng = rng
        self._stop = anyio.Event()
        self._changed = anyio.Event()
        self._live: set[Connector] = set()
        self.auth_failure: AuthError | None = None
        self.connects = 0  # connections that came up, ever (for tests and status)

    def __repr__(self) -> str:  # never show the token
        return f"GatewayProgram(url={self.url!r}, connections={self.config.connections})"

    @property
    def connected(self) -> int:
        return len(self._live)

    def stop(self) -> None:
        """Ask the program to drain and return (idempotent, safe from any task of its event loop)."""
        self._stop.set()

    async def wait_connected(self, count: int = 1) -> None:
        while len(self._live) < count:
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        factory = self._factory or _default_factory()
        server_ssl = server_ssl_context(self.config)
        async with self.gateway.running():
            await self._audit(
                "gateway.start",
                url=self.url,
                connections=self.config.connections,
                routes=self.config.route_names(),
                proxy=bool(self._proxy),
                perimeter=self.gateway.describe(),
            )
            try:
                async with anyio.create_task_group() as tg:
                    if handle_signals:
                        tg.start_soon(self._watch_signals, tg.cancel_scope)
                    for index in range(self.config.connections):
                        tg.start_soon(self._supervise, index, factory, server_ssl)
                    task_status.started()
                    await self._stop.wait()
                    await self._drain()
                    tg.cancel_scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._audit(
                        "gateway.stop", reason="auth_failure" if self.auth_failure is not None else "stopped"
                    )
        if self.auth_failure is not None:
            raise self.auth_failure

    async def _supervise(self, index: int, factory: ConnectorFactory, server_ssl: ssl.SSLContext) -> None:
        backoff = FullJitterBackoff(base_s=self._backoff[0], cap_s=self._backoff[1], rng=self._rng)
        while not self._stop.is_set():
            connector = factory(
                self.url,
                self._token,
                self.gateway,
                server_ssl,
                proxy=self._proxy,
                ping_interval_s=self.config.ping_interval_s,
                dead_after_s=self.config.dead_after_s,
                client_ssl=self._client_ssl,
            )
            up_at: float | None = None

            def up(connector: Connector = connector) -> None:
                nonlocal up_at
                up_at = anyio.current_time()
                self._live.add(connector)
                self.connects += 1
                self._notify()
                log.info("connection %d: tunnel up (%s)", index, self.url)

            reason = "closed"
            try:
                await connector.run(task_status=_UpSignal(up))
            except AuthError as exc:
                if _is_token_rejection(exc):
                    await self._token_refused(index, exc)
                    return
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - any failure of one link is retried; others keep serving
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                if connector in self._live:
                    self._live.discard(connector)
                    self._notify()
            if up_at is not None:
                log.warning("connection %d: tunnel down (%s)", index, reason)
                await self._audit("gateway.connection", index=index, state="down", reason=reason[:300])
                if anyio.current_time() - up_at >= self._healthy_after_s:
                    backoff.reset()
            if self._stop.is_set():
                return
            delay = backoff.next_delay()
            log.info(
                "connection %d: reconnecting in %.2fs (%s)",
                index,
                delay,
                reason if up_at is None else "after drop",
            )
            with anyio.move_on_after(delay):
                await self._stop.wait()

    async def _token_refused(self, index: int, exc: AuthError) -> None:
        """Stop this connection's supervisor; stop the gateway only when no connection is left.

        A rotated token is refused on reconnect while the connections it opened still
        serve through the rotation's grace period: draining those now would cut traffic
        the edge still accepts.
        """
        await self._audit("gateway.connection", index=index, state="refused", reason=str(exc)[:300])
        if self._live:
            log.error(
                "connection %d: the server refused the tunnel token (%s); not retrying this connection, "
                "%d other(s) serve until the server closes them. "
                "Check --tunnel-token / INWALL_TUNNEL_TOKEN (rotated or archived tunnel?)",
                index,
                exc,
                len(self._live),
            )
            return
        log.error(
            "connection %d: the server refused the tunnel token (%s); not retrying. "
            "Check --tunnel-token / INWALL_TUNNEL_TOKEN (rotated or archived tunnel?)",
            index,
            exc,
        )
        self.auth_failure = exc
        self.stop()

    async def _drain(self) -> None:
        timeout = self.config.drain_timeout_s
        log.info("draining %d connection(s), up to %gs", len(self._live), timeout)
        self.gateway.end_streams()
        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as tg:
                for connector in list(self._live):
                    tg.start_soon(connector.drain, timeout)
            await self.gateway.wait_idle()

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop.is_set():
                    log.warning("second %s: stopping without waiting", signal.Signals(signum).name)
                    scope.cancel()
                    return
                log.info("%s: draining, then exiting", signal.Signals(signum).name)
                self.stop()

    async def _audit(self, kind: str, **fields: Any) -> None:
        if self.audit is None:
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(functools.partial(self.audit.append, kind, **fields))


def _is_token_rejection(exc: AuthError) -> bool:
    """TN's TunnelAuthRejected (401/403 on the upgrade); other AuthErrors (a certificate) may heal."""
    return isinstance(exc, TunnelAuthRejected)
