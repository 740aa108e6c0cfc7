"""The gateway's end of one tunnel connection: dial out, terminate the inner TLS, serve ASGI.

The gateway program keeps several connectors up and restarts them with backoff; one
connector is one connection and runs once. Nothing listens inside the private network:
the connector dials the edge (optionally through an HTTP CONNECT proxy), and each
HTTP/2 stream the edge opens becomes one ASGI ``http`` call to the gateway's app.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskStatus

from inwall.errors import LocalProtocolError
from inwall.tunnel._dial import dial, proxy_from_env
from inwall.tunnel._server import ASGIApp, ServerConnection
from inwall.tunnel.errors import TunnelClosed
from inwall.tunnel.link import DEFAULT_MAX_MESSAGE_BYTES, LinkLimits
from inwall.tunnel.liveness import Liveness
from inwall.tunnel.mux import MuxSettings
from inwall.tunnel.tls import TLSEndpoint

__all__ = ["ASGIApp", "TunnelConnector", "proxy_from_env"]

logger = logging.getLogger("inwall.tunnel")


class TunnelConnector:
    """One outbound tunnel connection serving ``app``.

    ``run`` raises :class:`~inwall.tunnel.errors.TunnelAuthRejected` when the edge refuses
    the token (do not retry), :class:`~inwall.tunnel.errors.TunnelRefused` for other
    refusals (e.g. no CA registered yet: retry with backoff), and
    :class:`~inwall.tunnel.errors.TunnelUnavailable` / ``TunnelClosed`` /
    :class:`~inwall.tunnel.errors.TunnelProtocolError` when the link cannot be opened or
    ends (retry with backoff). It returns normally only after :meth:`drain`.
    """

    def __init__(
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
        connect_timeout_s: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        mux_settings: MuxSettings | None = None,
    ) -> None:
        Liveness(interval_s=ping_interval_s, dead_after_s=dead_after_s, now=0.0)  # validates
        self._limits = LinkLimits(max_message_bytes)
        self._url = url
        self._token = token
        self._app = app
        self._server_ssl = server_ssl
        self._proxy = proxy
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        self._client_ssl = client_ssl
        self._connect_timeout_s = connect_timeout_s
        self._mux_settings = mux_settings or MuxSettings()
        self._conn: ServerConnection | None = None
        self._dial_scope: anyio.CancelScope | None = None
        self._started = False
        self._draining = False
        host = urlsplit(url).hostname or "edge"
        self.label = f"gateway->{host}"

    def __repr__(self) -> str:
        return f"TunnelConnector({self._url!r}, token=<redacted>)"

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.is_open

    @property
    def active_streams(self) -> int:
        return len(self._conn.streams) if self._conn is not None else 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, ``started()`` once the tunnel carries traffic, serve until the link ends."""
        if self._started:
            raise LocalProtocolError("a TunnelConnector runs once; create a new one to reconnect")
        self._started = True
        scope = self._dial_scope = anyio.CancelScope()
        with scope:
            link = await dial(
                self._url,
                self._token,
                proxy=self._proxy,
                client_ssl=self._client_ssl,
                limits=self._limits,
                timeout_s=self._connect_timeout_s,
            )
        self._dial_scope = None
        if scope.cancelled_caught:
            return  # drained while dialling
        if self._draining:
            with anyio.CancelScope(shield=True):
                await link.aclose(1001, "gateway draining")
            return
        conn = ServerConnection(
            link,
            TLSEndpoint(self._server_ssl, server_side=True),
            self._app,
            settings=self._mux_settings,
            ping_interval_s=self._ping_interval_s,
            dead_after_s=self._dead_after_s,
            max_message_bytes=self._limits.max_message_bytes,
            label=self.label,
        )
        self._conn = conn
        try:
            await conn.run(task_status=task_status)
        finally:
            self._conn = None
        if not self.draining:  # drain() may have run while we served
            raise TunnelClosed("the tunnel connection ended")
        logger.info("tunnel connection %s drained", self.label)

    async def wait_closed(self) -> None:
        """Wait until the current connection has ended (at once when there is none)."""
        conn = self._conn
        if conn is not None:
            await conn.closed.wait()

    async def drain(self, timeout_s: float) -> None:
        """Stop taking new streams (GOAWAY), let in-flight ones finish up to ``timeout_s``, close."""
        self._draining = True
        if self._dial_scope is not None:
            self._dial_scope.cancel()
        conn = self._conn
        if conn is not None:
            await conn.drain(timeout_s)
