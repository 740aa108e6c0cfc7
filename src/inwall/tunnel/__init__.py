"""MCP tunnels: private MCP servers reached through one outbound gateway connection.

Layers, outside in: a WebSocket (``/v1/tunnels/connect``) opened by the gateway and
authenticated by the tunnel token; inner TLS end to end between the edge (client) and
the gateway (server), verified against the tunnel's registered CAs; HTTP/2 inside it,
one stream per MCP HTTP request. Protocol cores (``link``, ``wsclient``, ``tls``,
``mux``, ``liveness``) are sans-I/O; the edge and the connector are their anyio drivers.
"""

from inwall.tunnel.connector import TunnelConnector, proxy_from_env
from inwall.tunnel.edge import TunnelAuth, TunnelDirectory, TunnelEdge
from inwall.tunnel.errors import (
    GatewayCertificateRejected,
    NoGateway,
    NoTrustedCertificate,
    TunnelAuthRejected,
    TunnelClosed,
    TunnelProtocolError,
    TunnelRefused,
    TunnelUnavailable,
)
from inwall.tunnel.link import CONNECT_PATH, SUBPROTOCOL
from inwall.tunnel.mux import MuxSettings
from inwall.tunnel.tls import edge_client_context, gateway_server_context

__all__ = [
    "CONNECT_PATH",
    "SUBPROTOCOL",
    "GatewayCertificateRejected",
    "MuxSettings",
    "NoGateway",
    "NoTrustedCertificate",
    "TunnelAuth",
    "TunnelAuthRejected",
    "TunnelClosed",
    "TunnelConnector",
    "TunnelDirectory",
    "TunnelEdge",
    "TunnelProtocolError",
    "TunnelRefused",
    "TunnelUnavailable",
    "edge_client_context",
    "gateway_server_context",
    "proxy_from_env",
]
