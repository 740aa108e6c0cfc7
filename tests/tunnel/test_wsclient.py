"""The gateway's WebSocket client core against wsproto's server, all in memory."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from inwall.tunnel.link import SUBPROTOCOL, LinkLimits
from inwall.tunnel.wsclient import Accepted, Closed, Data, Failed, Rejected, WsClient, WsEvent

TOKEN = "tok-wsclient-secret"


def _server_sees_request() -> tuple[WsClient, WSConnection, Request]:
    client = WsClient(
        host="edge.test:8443", target="/v1/tunnels/connect", token=TOKEN, limits=LinkLimits(64 * 1024)
    )
    client.initiate()
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.data_to_send())
    (request,) = list(server.events())
    assert isinstance(request, Request)
    return client, server, request


def _open() -> tuple[WsClient, WSConnection]:
    client, server, _ = _server_sees_request()
    events = client.receive_data(server.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
    assert events == [Accepted(SUBPROTOCOL)]
    return client, server


def _to_client(client: WsClient, server: WSConnection, event: object) -> list[WsEvent]:
    return client.receive_data(server.send(event))  # type: ignore[arg-type]


def test_upgrade_carries_bearer_token_and_subprotocol() -> None:
    client, _server, request = _server_sees_request()
    headers = dict(request.extra_headers)
    assert headers[b"authorization"] == f"Bearer {TOKEN}".encode()
    assert request.subprotocols == [SUBPROTOCOL]
    assert request.host == "edge.test:8443"
    assert request.extensions == []  # no permessage-deflate: the payload is ciphertext
    assert TOKEN not in repr(client.__dict__)


def test_binary_messages_both_ways() -> None:
    client, server = _open()
    client.send_message(b"\x00\x01" * 40_000)
    server.receive_data(client.data_to_send())
    got = b"".join(e.data for e in server.events() if isinstance(e, BytesMessage))
    assert got == b"\x00\x01" * 40_000
    events = _to_client(client, server, BytesMessage(data=b"from edge"))
    assert events == [Data(b"from edge")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frame_lengths_at_every_encoding_boundary(size: int) -> None:
    client, server = _open()
    payload = bytes(i % 251 for i in range(size))
    client.send_message(payload)
    server.receive_data(client.data_to_send())
    events = list(server.events())
    assert b"".join(e.data for e in events if isinstance(e, BytesMessage)) == payload


def test_rejection_status_and_body_are_reported() -> None:
    client, server, _ = _server_sees_request()
    data = server.send(
        RejectConnection(status_code=401, headers=[(b"content-type", b"application/json")], has_body=True)
    )
    data += server.send(RejectData(data=b'{"error":"nope"}', body_finished=True))
    assert client.receive_data(data) == [Rejected(401, b'{"error":"nope"}')]


def test_rejection_body_is_bounded() -> None:
    client, server, _ = _server_sees_request()
    data = server.send(RejectConnection(status_code=503, has_body=True))
    data += server.send(RejectData(data=b"x" * 100_000, body_finished=False))
    (event,) = client.receive_data(data)
    assert isinstance(event, Rejected) and len(event.body) == 4096


def test_wrong_subprotocol_fails() -> None:
    client, server, _ = _server_sees_request()
    events = client.receive_data(server.send(AcceptConnection(subprotocol=None)))
    assert len(events) == 1 and isinstance(events[0], Failed)


def test_text_message_fails_the_link() -> None:
    client, server = _open()
    events = _to_client(client, server, TextMessage(data="hello"))
    assert events == [Failed(1003, "text message on the link")]
    server.receive_data(client.data_to_send())
    assert any(isinstance(e, CloseConnection) and e.code == 1003 for e in server.events())


def test_oversized_message_fails_even_when_fragmented() -> None:
    client, server = _open()
    wire = server.send(BytesMessage(data=b"a" * 40_000, message_finished=False))
    wire += server.send(BytesMessage(data=b"b" * 40_000, message_finished=True))
    events = client.receive_data(wire)
    assert isinstance(events[-1], Failed) and events[-1].code == 1009
    # What arrived before the limit was crossed is still delivered, nothing after it.
    assert sum(len(e.data) for e in events if isinstance(e, Data)) <= 64 * 1024


def test_message_size_resets_per_message() -> None:
    client, server = _open()
    for _ in range(5):
        events = _to_client(client, server, BytesMessage(data=b"z" * 60_000))
        assert events == [Data(b"z" * 60_000)]


def test_ping_is_answered() -> None:
    client, server = _open()
    assert client.receive_data(server.send(Ping(payload=b"hi"))) == []
    server.receive_data(client.data_to_send())
    assert [e for e in server.events() if isinstance(e, Pong)] == [Pong(payload=b"hi")]


def test_close_is_answered_and_reported() -> None:
    client, server = _open()
    events = _to_client(client, server, CloseConnection(code=1008, reason="token revoked"))
    assert events == [Closed(1008, "token revoked")]
    assert client.finished
    server.receive_data(client.data_to_send())
    assert any(isinstance(e, CloseConnection) for e in server.events())


def test_garbage_from_the_server_fails_without_raising() -> None:
    client, _ = _open()
    events = client.receive_data(b"\x8f\x05hello")  # reserved opcode 0xF
    assert events and isinstance(events[-1], Failed | Closed)


def test_eof_before_upgrade_does_not_raise() -> None:
    client, _, _ = _server_sees_request()
    events = client.receive_data(None)
    assert all(isinstance(e, Failed | Closed) for e in events)
    assert not client.accepted
