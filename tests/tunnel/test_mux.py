"""The HTTP/2 core, paired with itself: one side's bytes are pushed into the other."""

from __future__ import annotations

import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame

from inwall.errors import LocalProtocolError
from inwall.tunnel.mux import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    Mux,
    MuxEvent,
    MuxSettings,
    PingAcknowledged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)

REQUEST = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"crm.t.test"), (b":path", b"/mcp")]


class Pair:
    """A client and a server Mux wired back to back."""

    def __init__(self, settings: MuxSettings | None = None) -> None:
        self.client = Mux(client=True, settings=settings)
        self.server = Mux(client=False, settings=settings)
        self.client.initiate()
        self.server.initiate()
        self.pump()

    def to_server(self) -> list[MuxEvent]:
        data = self.client.data_to_send()
        return self.server.receive_data(data) if data else []

    def to_client(self) -> list[MuxEvent]:
        data = self.server.data_to_send()
        return self.client.receive_data(data) if data else []

    def pump(self) -> tuple[list[MuxEvent], list[MuxEvent]]:
        at_server: list[MuxEvent] = []
        at_client: list[MuxEvent] = []
        for _ in range(10):
            a, b = self.to_server(), self.to_client()
            at_server += a
            at_client += b
            if not a and not b:
                break
        return at_server, at_client


def _body(events: list[MuxEvent], stream_id: int) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived) and e.stream_id == stream_id)


def test_request_response_round_trip() -> None:
    pair = Pair()
    assert pair.client.peer_ready and pair.server.peer_ready
    sid = pair.client.open_stream(REQUEST, end_stream=False)
    pair.client.send_data(sid, b"hello", end_stream=True)
    at_server, _ = pair.pump()
    assert at_server[0] == RequestReceived(sid, REQUEST)
    assert _body(at_server, sid) == b"hello"
    assert StreamEnded(sid) in at_server

    pair.server.send_response(sid, [(b":status", b"200"), (b"content-type", b"text/plain")], end_stream=False)
    pair.server.send_data(sid, b"world", end_stream=True)
    _, at_client = pair.pump()
    assert at_client[0] == ResponseReceived(sid, 200, [(b"content-type", b"text/plain")])
    assert _body(at_client, sid) == b"world"
    assert StreamEnded(sid) in at_client


def test_one_stream_can_fill_a_16_mib_window_without_acks() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_response(sid, [(b":status", b"200")], end_stream=False)
    payload = bytes(range(256)) * (80 * 1024)  # 20 MiB
    taken = pair.server.send_data(sid, payload)
    assert taken == 16 * 1024 * 1024, "the initial stream window lets one stream send 16 MiB unacknowledged"
    assert pair.server.send_data(sid, payload[taken:]) == 0
    _, at_client = pair.pump()
    got = [e for e in at_client if isinstance(e, DataReceived)]
    assert all(len(e.data) <= MuxSettings().max_frame_size for e in got)
    received = b"".join(e.data for e in got)
    assert received == payload[:taken]
    # Backpressure: nothing more until the client gives window back by consuming.
    pair.client.acknowledge(sid, sum(e.flow_length for e in got))
    _, at_client = pair.pump()
    rest = pair.server.send_data(sid, payload[taken:], end_stream=True)
    assert rest == len(payload) - taken
    _, at_client = pair.pump()
    assert received + _body(at_client, sid) == payload


def test_flow_control_is_per_stream() -> None:
    pair = Pair(MuxSettings(stream_window=65_535, connection_window=1024 * 1024))
    s1 = pair.client.open_stream(REQUEST, end_stream=True)
    s3 = pair.client.open_stream(REQUEST, end_stream=True)
    pair.pump()
    for sid in (s1, s3):
        pair.server.send_response(sid, [(b":status", b"200")], end_stream=False)
    assert pair.server.send_data(s1, b"a" * 100_000) == 65_535
    # A stalled stream does not stall its neighbour.
    assert pair.server.send_data(s3, b"b" * 1000) == 1000


def test_window_updates_are_reported_to_the_sender() -> None:
    pair = Pair(MuxSettings(stream_window=65_535, connection_window=1024 * 1024))
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_response(sid, [(b":status", b"200")], end_stream=False)
    pair.server.send_data(sid, b"x" * 65_535)
    _, at_client = pair.pump()
    pair.client.acknowledge(sid, sum(e.flow_length for e in at_client if isinstance(e, DataReceived)))
    at_server, _ = pair.pump()
    assert WindowUpdated(sid) in at_server


def test_graceful_goaway_lets_in_flight_streams_finish_and_refuses_new_ones() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=False)
    pair.pump()
    last = pair.server.goaway(debug=b"draining")
    assert last == sid
    _, at_client = pair.pump()
    assert GoAwayReceived(last_stream_id=sid, error_code=0, debug=b"draining") in at_client
    assert not pair.client.can_open_stream
    with pytest.raises(LocalProtocolError):
        pair.client.open_stream(REQUEST, end_stream=True)
    # Unlike plain h2, the in-flight stream still flows both ways after the GOAWAY.
    pair.client.send_data(sid, b"late body", end_stream=True)
    at_server, _ = pair.pump()
    assert _body(at_server, sid) == b"late body"
    pair.server.send_response(sid, [(b":status", b"204")], end_stream=True)
    _, at_client = pair.pump()
    assert isinstance(at_client[0], ResponseReceived) and at_client[0].status == 204


def test_a_stream_opened_across_the_goaway_is_refused() -> None:
    pair = Pair()
    pair.server.goaway()
    # The client opens a stream before it has seen the GOAWAY.
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    at_server = pair.to_server()
    assert not any(isinstance(e, RequestReceived) for e in at_server)
    at_client = pair.to_client()
    assert StreamReset(sid, 0x7, remote=True) in at_client  # REFUSED_STREAM: safe to retry elsewhere


def test_a_response_racing_our_reset_is_ignored() -> None:
    """A client gives up (timeout, cancel) just as the server answers: only that stream is affected."""
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    pair.pump()
    pair.client.reset_stream(sid)
    reset = pair.client.data_to_send()  # the RST is in flight...
    pair.server.send_response(sid, [(b":status", b"200")], end_stream=False)  # ...as the answer leaves
    pair.server.send_data(sid, b"late", end_stream=True)
    at_client = pair.to_client()
    assert not any(isinstance(e, ConnectionFailed) for e in at_client)
    assert not pair.client.failed
    pair.server.receive_data(reset)
    sid2 = pair.client.open_stream(REQUEST, end_stream=True)
    at_server, _ = pair.pump()
    assert RequestReceived(sid2, REQUEST) in at_server


def test_ping_is_acknowledged() -> None:
    pair = Pair()
    opaque = pair.client.ping()
    _, at_client = pair.pump()
    assert PingAcknowledged(opaque) in at_client


def test_reset_reaches_the_peer_and_is_idempotent() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=False)
    pair.pump()
    pair.client.reset_stream(sid)
    pair.client.reset_stream(sid)
    at_server, _ = pair.pump()
    assert StreamReset(sid, 0x8, remote=True) in at_server


def _frames_after_preface(server: Mux, *frames: bytes) -> list[MuxEvent]:
    return server.receive_data(b"".join(frames))


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (DataFrame(1, data=b"x" * 10).serialize()[:3] + b"\xff" + b"\x00" * 5, "unknown frame ok"),
        (b"\x00\x10\x00\x00\x00\x00\x00\x00\x01" + b"x" * 4096, "DATA on an idle stream"),
        ((1 << 20).to_bytes(3, "big") + b"\x00\x00\x00\x00\x00\x01", "frame over the size limit"),
        (b"\x00\x00\x04\x07\x00\x00\x00\x00\x00" + b"\x00" * 4, "GOAWAY shorter than 8 bytes"),
        (b"\x00\x00\x08\x07\x00\x00\x00\x00\x03" + b"\x00" * 8, "GOAWAY on a stream"),
        (b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"1234567", "PING of the wrong length"),
        (b"\x00\x00\x08\x06\x00\x00\x00\x00\x05" + b"12345678", "PING on a stream"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_input_fails_the_connection_without_raising(garbage: bytes, why: str) -> None:
    pair = Pair()
    events = pair.server.receive_data(garbage)
    if why == "unknown frame ok":
        # Unknown frame types are ignored, as HTTP/2 requires.
        assert not any(isinstance(e, ConnectionFailed) for e in events)
        return
    assert any(isinstance(e, ConnectionFailed) for e in events), why
    assert pair.server.failed
    # A GOAWAY with an error goes back to the peer...
    at_client = pair.to_client()
    goaways = [e for e in at_client if isinstance(e, GoAwayReceived)]
    assert goaways and goaways[0].error_code != 0
    # ...and the failed side ignores whatever else arrives.
    assert pair.server.receive_data(b"anything") == []


def test_oversized_header_block_is_refused_before_it_is_buffered() -> None:
    pair = Pair(MuxSettings(max_header_list_size=8 * 1024))
    block = HeadersFrame(1, data=b"\x00" * 32 * 1024)  # over the 8 KiB list + 16 KiB of slack
    block.flags.add("END_HEADERS")
    events = pair.server.receive_data(block.serialize())
    assert any(isinstance(e, ConnectionFailed) and "header block" in e.reason for e in events)


def test_headers_interrupted_by_another_frame_fail() -> None:
    pair = Pair()
    headers = HeadersFrame(1, data=b"\x82")  # no END_HEADERS: a CONTINUATION must follow
    events = pair.server.receive_data(headers.serialize() + SettingsFrame(0).serialize())
    assert any(isinstance(e, ConnectionFailed) for e in events)


def test_header_list_over_the_limit_fails() -> None:
    pair = Pair(MuxSettings(max_header_list_size=4096))
    big = [*REQUEST, (b"x-big", b"v" * 8000)]
    pair.client.open_stream(big, end_stream=True)
    at_server = pair.to_server()
    assert any(isinstance(e, ConnectionFailed) for e in at_server)


def test_goaway_split_across_reads_is_reassembled() -> None:
    pair = Pair()
    frame = GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"bye").serialize()
    events: list[MuxEvent] = []
    for i in range(len(frame)):
        events += pair.client.receive_data(frame[i : i + 1])
    assert events == [GoAwayReceived(0, 0, b"bye")]


@pytest.mark.parametrize("cut", [5, 9, 12, 20])
def test_goaway_split_across_reads_then_a_ping_keeps_the_connection(cut: int) -> None:
    # Reads that start or end inside a frame header or a GOAWAY must not reach h2 raw: it would
    # see those bytes twice or never, and the PING after them would break the connection.
    pair = Pair()
    frame = GoAwayFrame(0, last_stream_id=0, error_code=0, additional_data=b"draining").serialize()
    opaque = b"\x00" * 7 + b"\x01"
    ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + opaque
    events = pair.client.receive_data(frame[:cut])
    events += pair.client.receive_data(frame[cut:] + ping)
    assert not any(isinstance(e, ConnectionFailed) for e in events), events
    assert events == [GoAwayReceived(0, 0, b"draining")]
    assert not pair.client.failed
    # h2 parsed the PING whole and answers it.
    at_server = pair.to_server()
    assert PingAcknowledged(opaque) in at_server


def test_invalid_status_resets_only_that_stream() -> None:
    pair = Pair()
    sid = pair.client.open_stream(REQUEST, end_stream=True)
    pair.pump()
    pair.server.send_response(sid, [(b":status", b"099")], end_stream=True)
    _, at_client = pair.pump()
    assert StreamReset(sid, 0x1, remote=False) in at_client
    assert not pair.client.failed


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        MuxSettings(max_frame_size=1024)
    with pytest.raises(ValueError, match="connection_window"):
        MuxSettings(stream_window=1 << 24, connection_window=1 << 20)
    with pytest.raises(ValueError, match="max_concurrent_streams"):
        MuxSettings(max_concurrent_streams=0)


def test_role_misuse_is_a_local_error() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError):
        pair.server.open_stream(REQUEST, end_stream=True)
    with pytest.raises(LocalProtocolError):
        pair.client.send_response(1, [(b":status", b"200")], end_stream=True)
    with pytest.raises(LocalProtocolError):
        pair.client.initiate()


def test_concurrency_limit_is_the_servers() -> None:
    pair = Pair(MuxSettings(max_concurrent_streams=2))
    pair.client.open_stream(REQUEST, end_stream=False)
    pair.client.open_stream(REQUEST, end_stream=False)
    assert not pair.client.can_open_stream


def test_frame_repr_does_not_hexlify_whole_payloads() -> None:
    frame = DataFrame(1, data=b"\x01" * (1 << 20))
    assert repr(frame).endswith("<hex:01010101010101010101...>")
    assert repr(DataFrame(1, data=b"ab")).endswith("<hex:6162>")
