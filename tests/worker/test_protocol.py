"""The worker ↔ shim protocol core, sans I/O: framing, ids, partial input, and a misbehaving shim."""

from __future__ import annotations

import json

import pytest

from inwall.errors import LocalProtocolError, RemoteProtocolError
from inwall.worker import _shim
from inwall.worker.protocol import Reply, ShimProtocol


def test_requests_are_numbered_lines() -> None:
    p = ShimProtocol()
    rid1, line1 = p.request("bash", {"command": "true"})
    rid2, _ = p.request("read", {"file_path": "a"})
    assert (rid1, rid2) == (1, 2)
    assert line1.endswith(b"\n") and line1.count(b"\n") == 1
    assert json.loads(line1) == {"id": 1, "op": "bash", "args": {"command": "true"}}


def test_replies_split_across_chunks_and_several_per_chunk() -> None:
    p = ShimProtocol()
    data = b'{"id":1,"ok":true,"result":"a"}\n{"id":2,"ok":false,"error":"b","meta":{"x":1}}\n'
    got = []
    for i in range(len(data)):  # one byte at a time
        got += p.receive_data(data[i : i + 1])
    assert [(r.id, r.ok, r.result, r.error, r.meta) for r in got] == [
        (1, True, "a", None, {}),
        (2, False, None, "b", {"x": 1}),
    ]
    assert p.receive_data(
        b'{"id":3,"ok":false,"cancelled":true}\n{"id":4,"ok":false,"exception":"E()"}\n'
    ) == [
        Reply(3, False, cancelled=True),
        Reply(4, False, exception="E()"),
    ]


def test_a_line_that_is_not_a_reply_is_the_peers_fault() -> None:
    for bad in (b"not json\n", b"[1,2]\n", b'{"id":"x","ok":true}\n', b'{"id":1}\n'):
        with pytest.raises(RemoteProtocolError):
            ShimProtocol().receive_data(bad)


def test_an_endless_line_is_refused() -> None:
    p = ShimProtocol(max_line=100)
    p.receive_data(b"x" * 60)
    with pytest.raises(RemoteProtocolError):
        p.receive_data(b"x" * 60)


def test_nothing_after_eof() -> None:
    p = ShimProtocol()
    p.receive_eof()
    with pytest.raises(LocalProtocolError):
        p.receive_data(b"{}\n")
    with pytest.raises(LocalProtocolError):
        p.request("bash", {})


def test_both_ends_agree() -> None:
    """The host's request line goes through the shim's real handler; its reply comes back through the core."""
    host = ShimProtocol()
    shim = _shim.Shim("/")
    rid, line = host.request("hello", {})
    reply = _shim.handle(shim, json.loads(line))
    out = json.dumps(reply).encode() + b"\n"
    (parsed,) = host.receive_data(out)
    assert parsed.id == rid and parsed.ok and parsed.result["workdir"] == "/"
    rid, line = host.request("nope", {})
    (parsed,) = host.receive_data(json.dumps(_shim.handle(shim, json.loads(line))).encode() + b"\n")
    assert parsed.exception == "ValueError(\"unknown op 'nope'\")"
    assert ShimProtocol.cancel(rid) == b'{"op":"cancel","target":2}\n'
