"""The tunnel's exceptions, placed in inwall's tree by what the caller does next.

    InwallError
    ├── AuthError
    │   ├── TunnelAuthRejected          the edge refused the tunnel token: stop retrying, fix the token
    │   └── GatewayCertificateRejected  inner TLS: the gateway's certificate did not verify against the
    │                                   tunnel's registered CAs (fix the certificate or register its CA)
    ├── Conflict
    │   └── NoTrustedCertificate        the tunnel has no registered CA; register one before traffic flows
    ├── Unavailable                     retry later, with backoff
    │   └── TunnelUnavailable
    │       ├── TunnelRefused           the edge answered the upgrade with a non-auth error status
    │       ├── TunnelClosed            the link closed or died (dead peer, reset, shutdown, revocation)
    │       └── NoGateway               edge side: no gateway connected within ``connect_wait_s``
    └── RemoteProtocolError
        └── TunnelProtocolError         the peer broke link, TLS or HTTP/2 framing; that connection is closed

The edge's httpx2 transport raises ``httpx2`` exceptions (what the MCP SDK understands),
chained from these with ``raise ... from``.
"""

from __future__ import annotations

from inwall.errors import AuthError, Conflict, RemoteProtocolError, Unavailable

__all__ = [
    "GatewayCertificateRejected",
    "NoGateway",
    "NoTrustedCertificate",
    "TunnelAuthRejected",
    "TunnelClosed",
    "TunnelProtocolError",
    "TunnelRefused",
    "TunnelUnavailable",
]


class TunnelAuthRejected(AuthError):
    """The edge answered the WebSocket upgrade with 401 or 403: the token is wrong, rotated or archived."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class GatewayCertificateRejected(AuthError):
    """The gateway's inner-TLS certificate does not chain to a CA registered on the tunnel."""


class NoTrustedCertificate(Conflict):
    """The tunnel has no non-archived CA certificate, so the edge carries no traffic for it."""


class TunnelUnavailable(Unavailable):
    """The tunnel cannot carry traffic right now; retry with backoff."""


class TunnelRefused(TunnelUnavailable):
    """The edge refused the upgrade for a reason other than the token (no CA, not running, a proxy error)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TunnelClosed(TunnelUnavailable):
    """The link ended: the peer closed it, stopped answering pings, or the network failed."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NoGateway(TunnelUnavailable):
    """No gateway of the tunnel was connected within the edge's wait."""


class TunnelProtocolError(RemoteProtocolError):
    """The peer sent bytes the link, TLS or HTTP/2 layer forbids; only that connection is closed."""
