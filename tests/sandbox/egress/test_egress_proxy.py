"""EgressProxy over real sockets on 127.0.0.1: what is allowed flows, what is not gets a readable no."""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import anyio
import pytest
from anyio.streams.tls import TLSAttribute, TLSStream

from inwall.audit import AuditLog, verify_file
from inwall.errors import ConfigError
from inwall.sandbox.egress.proxy import EgressProxy, StaticResolver
from inwall.sandbox.egress.rules import NetworkRules

from .helpers import (
    CRED,
    TLS_NAME,
    TlsMaterial,
    basic,
    echo_origin,
    http_origin,
    read_all,
    running_bridge,
    running_proxy,
    tls_origin,
)

pytestmark = pytest.mark.anyio

AUTH = f"Proxy-Authorization: {basic()}\r\n".encode()


async def ask(proxy: EgressProxy, raw: bytes) -> bytes:
    """Send *raw* to the proxy's unix socket and read until it closes."""
    async with await anyio.connect_unix(proxy.socket_path) as stream:
        await stream.send(raw)
        return await read_all(stream)


def split(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


# --- HTTP forwarding and CONNECT --------------------------------------------------------------


async def test_absolute_form_request_reaches_an_allowed_origin(sock_dir: Path) -> None:
    audit_path = sock_dir / "audit.jsonl"
    audit = AuditLog(audit_path)
    async with (
        http_origin() as origin,
        running_proxy(sock_dir, ["allowed.test"], names={"allowed.test": ["127.0.0.1"]}, audit=audit) as (
            proxy,
            events,
        ),
    ):
        response = await ask(
            proxy,
            b"POST http://allowed.test:%d/path?q=1 HTTP/1.1\r\n" % origin.port
            + b"Host: somewhere-else.test\r\n"
            + AUTH
            + b"Proxy-Connection: keep-alive\r\nX-Kept: 1\r\nContent-Length: 4\r\n\r\nBODY",
        )
        [event] = await events.wait(1)
    audit.close()
    status, _headers, body = split(response)
    assert status == 200
    assert body == b"hello from origin\nBODY"
    [head] = origin.heads
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /path?q=1 HTTP/1.1"
    assert f"Host: allowed.test:{origin.port}" in lines
    assert "X-Kept: 1" in lines and "Connection: close" in lines
    assert b"proxy-" not in head.lower()
    assert (event.protocol, event.host, event.port, event.decision) == (
        "http",
        "allowed.test",
        origin.port,
        "allowed",
    )
    assert event.address == "127.0.0.1"
    assert event.bytes_up > len(head) and event.bytes_down == len(response)
    assert verify_file(audit_path).ok
    text = audit_path.read_text()
    assert CRED not in text and basic() not in text
    [record] = [json.loads(line) for line in text.splitlines()]
    assert record["kind"] == "egress"
    assert (record["host"], record["decision"], record["bytes_down"]) == (
        "allowed.test",
        "allowed",
        len(response),
    )


async def test_ip_literal_rule_reaches_loopback_origin(sock_dir: Path) -> None:
    async with http_origin() as origin:
        rule = f"127.0.0.1:{origin.port}"
        async with running_proxy(sock_dir, [rule]) as (proxy, events):
            response = await ask(proxy, b"GET http://127.0.0.1:%d/ HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH))
            await events.wait(1)
    assert split(response)[0] == 200
    assert origin.connections == 1


async def test_connect_tunnel_carries_a_verified_tls_handshake(
    sock_dir: Path, tls_material: TlsMaterial
) -> None:
    async with (
        tls_origin(tls_material) as origin,
        running_proxy(sock_dir, [TLS_NAME], names={TLS_NAME: ["127.0.0.1"]}) as (proxy, events),
    ):
        async with await anyio.connect_unix(proxy.socket_path) as raw:
            await raw.send(b"CONNECT %s:%d HTTP/1.1\r\n%s\r\n" % (TLS_NAME.encode(), origin.port, AUTH))
            with anyio.fail_after(5):
                reply = await raw.receive()
            assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
            with anyio.fail_after(5):
                tls = await TLSStream.wrap(
                    raw,
                    hostname=TLS_NAME,
                    ssl_context=tls_material.client_context(),
                    standard_compatible=False,
                )
                peer = tls.extra(TLSAttribute.peer_certificate)
                await tls.send(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % TLS_NAME.encode())
                response = await read_all(tls)
        [event] = await events.wait(1)
    assert split(response)[0] == 200
    assert peer is not None and (("commonName", TLS_NAME),) in peer["subject"]
    assert event.protocol == "connect" and event.allowed
    assert event.bytes_up > 0 and event.bytes_down > len(
        response
    )  # TLS records are bigger than the plaintext


async def test_tunnel_splices_both_ways_with_half_close_and_counts_bytes(sock_dir: Path) -> None:
    payload = os.urandom(300_000)
    async with (
        echo_origin() as origin,
        running_proxy(sock_dir, ["echo.test"], names={"echo.test": ["127.0.0.1"]}) as (proxy, events),
    ):
        async with await anyio.connect_unix(proxy.socket_path) as stream:
            await stream.send(
                b"CONNECT echo.test:%d HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH) + payload[:1000]
            )
            with anyio.fail_after(5):
                established = b""
                while b"\r\n\r\n" not in established:
                    established += await stream.receive()
            echoed = established.partition(b"\r\n\r\n")[2]

            async def send_rest() -> None:
                await stream.send(payload[1000:])
                await stream.send_eof()

            async with anyio.create_task_group() as tg:
                tg.start_soon(send_rest)
                echoed += await read_all(stream)
        [event] = await events.wait(1)
    assert echoed == payload
    assert event.bytes_up == len(payload) and event.bytes_down == len(payload)


# --- refusals -------------------------------------------------------------------------------------


async def test_denied_host_gets_403_with_reason(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"], names={"evil.test": ["127.0.0.1"]}) as (
        proxy,
        events,
    ):
        response = await ask(proxy, b"GET http://evil.test/x HTTP/1.1\r\n%s\r\n" % AUTH)
        connect = await ask(proxy, b"CONNECT evil.test:443 HTTP/1.1\r\n%s\r\n" % AUTH)
        await events.wait(2)
    status, headers, body = split(response)
    assert status == 403
    assert headers["x-inwall-denied-reason"] == "evil.test:80 is not in network.allowedDomains"
    assert (
        body
        == b"inwall sandbox: egress to evil.test:80 denied: evil.test:80 is not in network.allowedDomains\n"
    )
    status, headers, body = split(connect)
    assert status == 403 and "evil.test:443" in headers["x-inwall-denied-reason"]
    assert [(e.decision, e.host, e.address) for e in events.items] == [
        ("denied", "evil.test", None),
        ("denied", "evil.test", None),
    ]


async def test_deny_list_wins(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["*.example.com"], ["secret.example.com"]) as (proxy, events):
        response = await ask(proxy, b"CONNECT secret.example.com:443 HTTP/1.1\r\n%s\r\n" % AUTH)
        await events.wait(1)
    status, headers, _ = split(response)
    assert status == 403 and "deniedDomains" in headers["x-inwall-denied-reason"]


async def test_public_looking_name_resolving_to_loopback_is_denied(sock_dir: Path) -> None:
    async with http_origin() as origin:
        names = {"www.example.com": ["127.0.0.1"], "dev.example.com": ["127.0.0.1"]}
        allowed = ["*.example.com", f"127.0.0.1:{origin.port + 1 if origin.port < 65535 else 1}"]
        async with running_proxy(sock_dir, allowed, names=names) as (proxy, events):
            response = await ask(
                proxy, b"GET http://www.example.com:%d/ HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH)
            )
            await events.wait(1)
        # Positive control: the same origin through a rule naming the host exactly.
        async with running_proxy(sock_dir, ["dev.example.com"], names=names) as (proxy, events):
            control = await ask(
                proxy, b"GET http://dev.example.com:%d/ HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH)
            )
            await events.wait(1)
    status, headers, _ = split(response)
    assert status == 403
    assert headers["x-inwall-denied-reason"] == (
        "www.example.com resolved to a loopback address, which needs an explicit rule"
    )
    assert split(control)[0] == 200
    assert origin.connections == 1  # only the control ever reached it


async def test_missing_or_wrong_credential_is_refused(sock_dir: Path) -> None:
    async with (
        http_origin() as origin,
        running_proxy(sock_dir, ["allowed.test"], names={"allowed.test": ["127.0.0.1"]}) as (proxy, events),
    ):
        target = b"GET http://allowed.test:%d/ HTTP/1.1\r\n" % origin.port
        missing = await ask(proxy, target + b"\r\n")
        wrong = await ask(proxy, target + f"Proxy-Authorization: {basic('nope')}\r\n\r\n".encode())
        control = await ask(proxy, target + AUTH + b"\r\n")
        await events.wait(3)
    for response in (missing, wrong):
        status, headers, body = split(response)
        assert status == 407
        assert headers["proxy-authenticate"].startswith("Basic ")
        assert b"credential" in body
    assert split(control)[0] == 200
    assert origin.connections == 1
    assert [e.reason for e in events.items[:2]] == ["missing or wrong proxy credential"] * 2


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n", 400),
        (b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * 70000, 431),
        (b"GET https://allowed.test/ HTTP/1.1\r\n\r\n", 501),
    ],
)
async def test_garbage_is_refused(sock_dir: Path, raw: bytes, status: int) -> None:
    async with running_proxy(sock_dir, ["allowed.test"]) as (proxy, events):
        response = await ask(proxy, raw)
        [event] = await events.wait(1)
    assert split(response)[0] == status
    assert event.decision == "denied" and event.reason.startswith("malformed request")


async def test_slow_head_times_out(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"], header_timeout_s=0.05) as (proxy, events):
        async with await anyio.connect_unix(proxy.socket_path) as stream:
            await stream.send(b"GET http://allowed.test/ HTTP/1.1\r\n")
            response = await read_all(stream)
        [event] = await events.wait(1)
    assert split(response)[0] == 408
    assert event.reason == "malformed request: the request head did not arrive in time"


async def test_unreachable_origin_is_a_502_not_a_denial(sock_dir: Path) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens on this port any more
    async with running_proxy(sock_dir, ["gone.test", "nodns.test"], names={"gone.test": ["127.0.0.1"]}) as (
        proxy,
        events,
    ):
        refused = await ask(proxy, b"GET http://gone.test:%d/ HTTP/1.1\r\n%s\r\n" % (port, AUTH))
        unresolved = await ask(proxy, b"GET http://nodns.test/ HTTP/1.1\r\n%s\r\n" % AUTH)
        await events.wait(2)
    assert split(refused)[0] == 502 and b"could not connect" in refused
    assert split(unresolved)[0] == 502 and b"could not resolve nodns.test" in unresolved
    assert [e.decision for e in events.items] == ["failed", "failed"]
    assert all(e.allowed for e in events.items)  # unreachable is not a policy violation


# --- SOCKS5 -----------------------------------------------------------------------------------


async def socks_connect(
    proxy: EgressProxy, address: bytes, port: int, *, password: bytes = CRED.encode(), cmd: int = 1
) -> tuple[anyio.abc.SocketStream, bytes]:
    stream = await anyio.connect_unix(proxy.socket_path)
    with anyio.fail_after(5):
        await stream.send(b"\x05\x01\x02")
        assert await stream.receive() == b"\x05\x02"
        await stream.send(b"\x01\x06inwall" + bytes((len(password),)) + password)
        status = await stream.receive()
        if status != b"\x01\x00":
            return stream, status
        await stream.send(bytes((5, cmd, 0)) + address + struct.pack(">H", port))
        reply = await stream.receive()
    return stream, reply


def domain(name: str) -> bytes:
    return b"\x03" + bytes((len(name),)) + name.encode()


async def test_socks5_connect_allowed(sock_dir: Path) -> None:
    async with (
        http_origin() as origin,
        running_proxy(sock_dir, ["allowed.test"], names={"allowed.test": ["127.0.0.1"]}) as (proxy, events),
    ):
        stream, reply = await socks_connect(proxy, domain("allowed.test"), origin.port)
        async with stream:
            assert reply == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
            await stream.send(b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
            response = await read_all(stream)
        [event] = await events.wait(1)
    assert split(response)[0] == 200
    assert (event.protocol, event.decision, event.address) == ("socks5", "allowed", "127.0.0.1")


async def test_socks5_ipv4_and_ipv6_addresses(sock_dir: Path) -> None:
    async with http_origin() as v4, http_origin("::1") as v6:
        allowed = [f"127.0.0.1:{v4.port}", f"[::1]:{v6.port}"]
        async with running_proxy(sock_dir, allowed) as (proxy, events):
            for address, port in (
                (b"\x01\x7f\x00\x00\x01", v4.port),
                (b"\x04" + bytes(15) + b"\x01", v6.port),
            ):
                stream, reply = await socks_connect(proxy, address, port)
                async with stream:
                    assert reply[:2] == b"\x05\x00"
                    await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    assert split(await read_all(stream))[0] == 200
            await events.wait(2)
    assert v4.connections == 1 and v6.connections == 1


async def test_socks5_denied_host(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"], names={"evil.test": ["127.0.0.1"]}) as (
        proxy,
        events,
    ):
        stream, reply = await socks_connect(proxy, domain("evil.test"), 80)
        async with stream:
            assert reply[:2] == b"\x05\x02"
            assert await read_all(stream) == b""
        [event] = await events.wait(1)
    assert (event.decision, event.host, event.port) == ("denied", "evil.test", 80)
    assert event.reason == "evil.test:80 is not in network.allowedDomains"


async def test_socks5_wrong_or_missing_credential(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"]) as (proxy, events):
        stream, status = await socks_connect(proxy, domain("allowed.test"), 80, password=b"wrong")
        async with stream:
            assert status == b"\x01\x01"
            assert await read_all(stream) == b""
        async with await anyio.connect_unix(proxy.socket_path) as stream:
            await stream.send(b"\x05\x01\x00")  # "no authentication" only
            assert await read_all(stream) == b"\x05\xff"
        await events.wait(2)
    assert [e.decision for e in events.items] == ["denied", "denied"]


@pytest.mark.parametrize("cmd", [2, 3])
async def test_socks5_bind_and_udp_associate_are_refused(sock_dir: Path, cmd: int) -> None:
    async with running_proxy(sock_dir, ["allowed.test"], names={"allowed.test": ["127.0.0.1"]}) as (
        proxy,
        events,
    ):
        stream, reply = await socks_connect(proxy, b"\x01\x7f\x00\x00\x01", 5353, cmd=cmd)
        async with stream:
            assert reply[:2] == b"\x05\x07"
            assert await read_all(stream) == b""  # and the connection ends: nothing is relayed
        [event] = await events.wait(1)
    assert event.decision == "denied"
    assert ("UDP ASSOCIATE" if cmd == 3 else "BIND") in event.reason


async def test_socks4_is_refused(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"]) as (proxy, events):
        reply = await ask(proxy, b"\x04\x01\x00\x50\x7f\x00\x00\x01inwall\x00")
        await events.wait(1)
    assert reply == b"\x00\x5b\x00\x00\x00\x00\x00\x00"


# --- lifecycle --------------------------------------------------------------------------------


async def test_socket_file_mode_and_cleanup(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"]) as (proxy, _events):
        mode = os.stat(proxy.socket_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not proxy.socket_path.exists()


async def test_refuses_to_replace_a_regular_file(sock_dir: Path) -> None:
    path = sock_dir / "egress.sock"
    path.write_text("not a socket")
    proxy = EgressProxy(NetworkRules.from_settings(["a.test"], []), path, credential=CRED)
    with pytest.raises(ConfigError):
        async with proxy:
            pass
    assert path.read_text() == "not a socket"


def test_constructor_checks() -> None:
    rules = NetworkRules.from_settings(["a.test"], [])
    with pytest.raises(ConfigError):
        EgressProxy(rules, Path("/tmp/x.sock"), credential="")
    with pytest.raises(ConfigError):
        EgressProxy(rules, Path("/tmp/" + "x" * 200), credential=CRED)
    assert CRED not in repr(EgressProxy(rules, Path("/tmp/x.sock"), credential=CRED))


async def test_closing_with_open_tunnels_is_prompt_and_audited(sock_dir: Path) -> None:
    audit = AuditLog(sock_dir / "audit.jsonl")
    async with echo_origin() as origin:
        with anyio.fail_after(5):
            async with running_proxy(
                sock_dir, ["echo.test"], names={"echo.test": ["127.0.0.1"]}, audit=audit
            ) as (proxy, events):
                streams = []
                for _ in range(5):
                    stream = await anyio.connect_unix(proxy.socket_path)
                    await stream.send(b"CONNECT echo.test:%d HTTP/1.1\r\n%s\r\nping" % (origin.port, AUTH))
                    got = b""
                    while not got.endswith(b"ping"):
                        got += await stream.receive()
                    streams.append(stream)
            # The proxy is closed: every tunnel was cut and recorded.
            for stream in streams:
                assert await read_all(stream) == b""
                await stream.aclose()
    audit.close()
    assert len(events.items) == 5
    assert all(e.decision == "allowed" and e.bytes_up == 4 for e in events.items)
    assert verify_file(sock_dir / "audit.jsonl").ok


async def test_connection_cap(sock_dir: Path) -> None:
    async with running_proxy(sock_dir, ["allowed.test"], max_connections=2) as (proxy, _events):
        held = [await anyio.connect_unix(proxy.socket_path) for _ in range(2)]
        for stream in held:
            await stream.send(b"GET http://allowed.test/ HTTP/1.1\r\n")  # a head that never ends
        async with await anyio.connect_unix(proxy.socket_path) as extra:
            assert await read_all(extra) == b""  # closed at once
        for stream in held:
            await stream.aclose()


async def test_static_resolver() -> None:
    resolver = StaticResolver({"Allowed.Test.": ["127.0.0.1", "::1"]})
    assert [str(a) for a in await resolver("allowed.test", 80)] == ["127.0.0.1", "::1"]
    with pytest.raises(OSError):
        await resolver("other.test", 80)
    with pytest.raises(ConfigError):
        StaticResolver({"x.test": ["not-an-ip"]})


async def test_a_failing_observer_does_not_stop_the_proxy(sock_dir: Path) -> None:
    seen: list[str] = []

    def observer(event: object) -> None:
        seen.append("called")
        raise RuntimeError("observer bug")

    rules = NetworkRules.from_settings(["allowed.test"], [])
    audit = AuditLog(sock_dir / "audit.jsonl")
    proxy = EgressProxy(
        rules,
        sock_dir / "p.sock",
        credential=CRED,
        on_event=observer,
        audit=audit,
        audit_context={"session": "s1"},
    )
    async with proxy:
        for _ in range(2):
            response = await ask(proxy, b"GET http://denied.test/ HTTP/1.1\r\n%s\r\n" % AUTH)
            assert split(response)[0] == 403
    audit.close()
    assert seen == ["called", "called"]
    assert proxy.stats.denied == 2 and proxy.stats.connections == 2
    records = [json.loads(line) for line in (sock_dir / "audit.jsonl").read_text().splitlines()]
    assert [r["session"] for r in records] == ["s1", "s1"]


async def test_one_request_per_connection_pins_the_checked_origin(sock_dir: Path) -> None:
    """A second, pipelined request rides the first one's connection: it cannot reach another host."""
    names = {"allowed.test": ["127.0.0.1"], "evil.test": ["127.0.0.1"]}
    async with (
        http_origin() as origin,
        http_origin() as evil,
        running_proxy(sock_dir, ["allowed.test"], names=names) as (proxy, events),
    ):
        first = b"GET http://allowed.test:%d/one HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH)
        second = b"GET http://evil.test:%d/two HTTP/1.1\r\n%s\r\n" % (evil.port, AUTH)
        response = await ask(proxy, first + second)
        await events.wait(1)
    assert response.count(b"HTTP/1.1 ") == 1 and split(response)[0] == 200
    assert [h.split(b"\r\n")[0] for h in origin.heads] == [b"GET /one HTTP/1.1"]
    assert evil.connections == 0
    assert len(events.items) == 1


async def test_many_concurrent_tunnels_through_the_bridge(sock_dir: Path) -> None:
    payloads = [os.urandom(40_000 + i) for i in range(40)]
    results: list[list[bytes]] = [[] for _ in payloads]
    names = {"echo.test": ["127.0.0.1"]}
    async with (
        echo_origin() as origin,
        running_proxy(sock_dir, ["echo.test"], names=names) as (proxy, events),
    ):
        async with running_bridge(proxy) as bridge:
            port = bridge.addresses[0][1]

            async def one(payload: bytes, out: list[bytes]) -> None:
                async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                    await stream.send(b"CONNECT echo.test:%d HTTP/1.1\r\n%s\r\n" % (origin.port, AUTH))
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += await stream.receive()
                    got = head.partition(b"\r\n\r\n")[2]
                    await stream.send(payload)
                    await stream.send_eof()
                    out.append(got + await read_all(stream))

            with anyio.fail_after(20):
                async with anyio.create_task_group() as tg:
                    for payload, out in zip(payloads, results, strict=True):
                        tg.start_soon(one, payload, out)
        await events.wait(len(payloads))
    assert [r[0] for r in results] == payloads
    assert proxy.stats.allowed == len(payloads)
    assert origin.connections == len(payloads)
