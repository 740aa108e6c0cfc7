"""Inner TLS as a sans-I/O pair, alone and carrying the HTTP/2 core."""

from __future__ import annotations

import contextlib
import ssl

import pytest

from inwall.tunnel.errors import GatewayCertificateRejected, TunnelProtocolError
from inwall.tunnel.mux import DataReceived, Mux, RequestReceived
from inwall.tunnel.tls import TLSEndpoint, edge_client_context
from tests.tunnel.helpers import DOMAIN, PKI


def _handshake(client: TLSEndpoint, server: TLSEndpoint) -> None:
    client.do_handshake()
    for _ in range(10):
        server.receive_ciphertext(client.ciphertext_to_send())
        server.do_handshake()
        client.receive_ciphertext(server.ciphertext_to_send())
        if client.do_handshake() and server.handshake_complete:
            # The server completes on the client's Finished.
            server.receive_ciphertext(client.ciphertext_to_send())
            if server.do_handshake():
                return
    raise AssertionError("handshake did not complete")


def _pair(pki: PKI, server_ctx: ssl.SSLContext, *, name: str = DOMAIN, cas: list[str] | None = None):
    client = TLSEndpoint(edge_client_context(cas or [pki.ca_pem]), server_side=False, server_hostname=name)
    server = TLSEndpoint(server_ctx, server_side=True)
    return client, server


def test_handshake_and_data_both_ways(pki: PKI) -> None:
    client, server = _pair(pki, pki.server_ssl())
    _handshake(client, server)
    client.write(b"ping" * 100_000)
    server.receive_ciphertext(client.ciphertext_to_send())
    assert server.read() == b"ping" * 100_000
    server.write(b"pong")
    client.receive_ciphertext(server.ciphertext_to_send())
    assert client.read() == b"pong"


def test_ciphertext_reveals_nothing_of_the_plaintext(pki: PKI) -> None:
    client, server = _pair(pki, pki.server_ssl())
    _handshake(client, server)
    secret = b'{"method":"tools/call","params":{"name":"lookup_customer"}}'
    client.write(secret)
    wire = client.ciphertext_to_send()
    assert b"lookup_customer" not in wire and b"tools/call" not in wire


def test_gateway_signed_by_an_unregistered_ca_is_rejected(pki: PKI) -> None:
    client, server = _pair(pki, pki.rogue_ssl())
    with pytest.raises(GatewayCertificateRejected, match="not trusted"):
        _handshake(client, server)


def test_gateway_certificate_for_another_domain_is_rejected(pki: PKI) -> None:
    client, server = _pair(pki, pki.wrong_name_ssl())
    with pytest.raises(GatewayCertificateRejected, match="not trusted"):
        _handshake(client, server)


def test_trust_is_exactly_the_registered_set(pki: PKI) -> None:
    # The right gateway, but the tunnel only trusts another CA: refused.
    client, server = _pair(pki, pki.server_ssl(), cas=[pki.other_ca_pem])
    with pytest.raises(GatewayCertificateRejected):
        _handshake(client, server)
    # Two registered CAs (rotation): either one works.
    client, server = _pair(pki, pki.server_ssl(), cas=[pki.other_ca_pem, pki.ca_pem])
    _handshake(client, server)


def test_no_ca_means_no_context() -> None:
    with pytest.raises(ValueError, match="at least one"):
        edge_client_context([])
    with pytest.raises(ValueError, match="could not be loaded"):
        edge_client_context(["-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"])


def test_a_client_must_name_the_server(pki: PKI) -> None:
    with pytest.raises(ValueError, match="server_hostname"):
        TLSEndpoint(edge_client_context([pki.ca_pem]), server_side=False)


def test_garbage_instead_of_tls_is_a_protocol_error(pki: PKI) -> None:
    server = TLSEndpoint(pki.server_ssl(), server_side=True)
    server.receive_ciphertext(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(TunnelProtocolError):
        server.do_handshake()


def test_tampered_record_is_a_protocol_error(pki: PKI) -> None:
    client, server = _pair(pki, pki.server_ssl())
    _handshake(client, server)
    client.write(b"x" * 100)
    wire = bytearray(client.ciphertext_to_send())
    wire[-5] ^= 0xFF
    server.receive_ciphertext(bytes(wire))
    with pytest.raises(TunnelProtocolError):
        server.read()


def test_close_notify_is_seen_as_peer_closed(pki: PKI) -> None:
    # Our edge never sends close_notify, but a peer's TLS stack may: the stdlib's SSLObject
    # stands in for it, and the gateway must take the alert as the end of the session.
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    peer = edge_client_context([pki.ca_pem]).wrap_bio(incoming, outgoing, server_hostname=DOMAIN)
    server = TLSEndpoint(pki.server_ssl(), server_side=True)
    for _ in range(10):
        try:
            peer.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        server.receive_ciphertext(outgoing.read())
        server.do_handshake()
        incoming.write(server.ciphertext_to_send())
        if done and server.handshake_complete:
            break
    assert server.handshake_complete
    with contextlib.suppress(ssl.SSLWantReadError):  # it queues close_notify, then waits for ours
        peer.unwrap()
    server.receive_ciphertext(outgoing.read())
    assert server.read() == b""
    assert server.peer_closed


def test_http2_inside_tls(pki: PKI) -> None:
    client, server = _pair(pki, pki.server_ssl())
    _handshake(client, server)
    edge, gateway = Mux(client=True), Mux(client=False)
    edge.initiate()
    gateway.initiate()

    def edge_to_gateway() -> list[object]:
        client.write(edge.data_to_send())
        server.receive_ciphertext(client.ciphertext_to_send())
        return list(gateway.receive_data(server.read()))

    def gateway_to_edge() -> list[object]:
        server.write(gateway.data_to_send())
        client.receive_ciphertext(server.ciphertext_to_send())
        return list(edge.receive_data(client.read()))

    edge_to_gateway()
    gateway_to_edge()
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"crm." + DOMAIN.encode()),
        (b":path", b"/"),
    ]
    sid = edge.open_stream(headers, end_stream=False)
    edge.send_data(sid, b"payload", end_stream=True)
    events = edge_to_gateway()
    assert RequestReceived(sid, headers) in events
    assert DataReceived(sid, b"payload", 7) in events
