"""The sans-I/O SOCKS5 server handshake: the happy path, refusals, misuse and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inwall.errors import InvalidInput, LocalProtocolError, RemoteProtocolError
from inwall.sandbox.egress.socks import AuthRequest, ConnectRequest, Reply, Socks5Server, SocksError, State

from .helpers import CRED


def state(server: Socks5Server) -> State:
    return server.state  # a call, so mypy does not carry narrowing across the steps


def greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def auth(user: bytes = b"inwall", password: bytes = CRED.encode()) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def connect_domain(host: bytes, port: int, cmd: int = 1) -> bytes:
    return bytes((5, cmd, 0, 3, len(host))) + host + struct.pack(">H", port)


def test_full_handshake_in_one_buffer_with_optimistic_data() -> None:
    server = Socks5Server()
    server.receive_data(greeting(0, 2) + auth() + connect_domain(b"example.com", 443) + b"\x16\x03\x01")
    event = server.next_event()
    assert isinstance(event, AuthRequest)
    assert event.matches(CRED)
    assert server.data_to_send() == b"\x05\x02"
    server.accept_auth(True)
    assert server.data_to_send() == b"\x01\x00"
    event = server.next_event()
    assert event == ConnectRequest("example.com", 443)
    assert state(server) is State.AWAIT_REPLY
    server.reply(Reply.SUCCEEDED)
    assert server.data_to_send() == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert state(server) is State.ESTABLISHED
    assert server.remainder == b"\x16\x03\x01"


def test_handshake_byte_by_byte() -> None:
    server = Socks5Server()
    wire = greeting(2) + auth()
    events = []
    for b in wire:
        server.receive_data(bytes((b,)))
        event = server.next_event()
        if event is not None:
            events.append(event)
    assert len(events) == 1 and isinstance(events[0], AuthRequest)
    server.accept_auth(True)
    for b in bytes((5, 1, 0, 1, 127, 0, 0, 1, 0x1F, 0x90)):
        assert server.next_event() is None
        server.receive_data(bytes((b,)))
    assert server.next_event() == ConnectRequest("127.0.0.1", 8080)


def test_ipv6_connect() -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth())
    server.next_event()
    server.accept_auth(True)
    server.receive_data(bytes((5, 1, 0, 4)) + bytes(15) + b"\x01" + struct.pack(">H", 443))
    assert server.next_event() == ConnectRequest("::1", 443)


def test_auth_refused() -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth(password=b"wrong"))
    event = server.next_event()
    assert isinstance(event, AuthRequest)
    assert not event.matches(CRED)
    server.accept_auth(False)
    assert server.data_to_send() == b"\x05\x02\x01\x01"
    assert state(server) is State.CLOSED
    assert "wrong" not in repr(event)  # credentials stay out of reprs


def test_no_credential_method_offered() -> None:
    server = Socks5Server()
    server.receive_data(greeting(0))
    with pytest.raises(SocksError) as info:
        server.next_event()
    assert info.value.reply == b"\x05\xff"
    assert state(server) is State.CLOSED


@pytest.mark.parametrize(("cmd", "name"), [(2, "BIND"), (3, "UDP ASSOCIATE"), (9, "command 0x09")])
def test_only_connect_is_supported(cmd: int, name: str) -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth())
    server.next_event()
    server.accept_auth(True)
    server.receive_data(bytes((5, cmd, 0, 1, 0, 0, 0, 0, 0, 0)))
    with pytest.raises(SocksError, match=name) as info:
        server.next_event()
    assert info.value.reply[:2] == b"\x05\x07"


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (bytes((5, 1, 0, 9, 0, 0)), 0x08),
        (bytes((4, 1, 0, 1, 0, 0, 0, 0, 0, 0)), 0x01),
        (bytes((5, 1, 0, 3, 0, 0, 80)), 0x01),  # empty domain
        (bytes((5, 1, 0, 3, 2)) + b"\xff\xfe" + b"\x00\x50", 0x01),  # not UTF-8
    ],
)
def test_malformed_requests(request_bytes: bytes, code: int) -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth())
    server.next_event()
    server.accept_auth(True)
    server.receive_data(request_bytes)
    with pytest.raises(SocksError) as info:
        server.next_event()
    assert info.value.reply[1] == code


def test_misuse_is_local_protocol_error() -> None:
    server = Socks5Server()
    with pytest.raises(LocalProtocolError):
        server.reply(Reply.SUCCEEDED)
    with pytest.raises(LocalProtocolError):
        server.accept_auth(True)
    with pytest.raises(LocalProtocolError):
        _ = server.remainder
    server.receive_data(greeting(2) + auth())
    server.next_event()
    server.accept_auth(False)
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"x")


def test_refusal_reply_closes() -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth() + connect_domain(b"evil.test", 80))
    server.next_event()
    server.accept_auth(True)
    server.data_to_send()
    assert server.next_event() == ConnectRequest("evil.test", 80)
    server.reply(Reply.NOT_ALLOWED)
    assert server.data_to_send()[:2] == b"\x05\x02"
    assert state(server) is State.CLOSED


def test_buffer_is_bounded() -> None:
    server = Socks5Server()
    with pytest.raises(SocksError):
        server.receive_data(b"\x05" * (70 * 1024))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 50), st.booleans())
def test_never_raises_anything_else(data: bytes, chunk: int, accept: bool) -> None:
    server = Socks5Server()
    try:
        for i in range(0, len(data), chunk):
            server.receive_data(data[i : i + chunk])
            while True:
                event = server.next_event()
                if event is None:
                    break
                if isinstance(event, AuthRequest):
                    server.accept_auth(accept)
                    if not accept:
                        return
                else:
                    assert 0 <= event.port <= 65535
                    server.reply(Reply.NOT_ALLOWED)
                    return
    except (RemoteProtocolError, InvalidInput):
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 255))
def test_hostile_requests_after_auth(tail: bytes, cmd: int) -> None:
    server = Socks5Server()
    server.receive_data(greeting(2) + auth())
    server.next_event()
    server.accept_auth(True)
    server.receive_data(bytes((5, cmd)) + tail)
    try:
        event = server.next_event()
    except SocksError as exc:
        assert cmd != 1 or exc.reply[:1] in (b"", b"\x05")
        return
    if event is not None:
        assert cmd == 1
        assert isinstance(event, ConnectRequest)
