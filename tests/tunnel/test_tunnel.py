"""The whole tunnel on real sockets: the edge under uvicorn on 127.0.0.1, gateways dialling it
with TunnelConnector, and an ASGI app behind them; requests go through the edge's httpx2 transport."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from hyperframe.frame import DataFrame

from inwall.audit import AuditLog, verify_file
from inwall.tunnel import (
    GatewayCertificateRejected,
    NoGateway,
    NoTrustedCertificate,
    TunnelAuthRejected,
    TunnelClosed,
    TunnelConnector,
    TunnelEdge,
    TunnelRefused,
    TunnelUnavailable,
    proxy_from_env,
)
from tests.tunnel.helpers import (
    DOMAIN,
    PKI,
    TOKEN,
    TUNNEL_ID,
    ConnectProxy,
    FakeDirectory,
    Forwarder,
    ProbeApp,
    pattern,
    running_connector,
    running_edge,
    sha256,
    tcp_server,
)

pytestmark = pytest.mark.anyio

BASE = f"https://crm.{DOMAIN}"


@asynccontextmanager
async def tunnel(
    pki: PKI,
    directory: FakeDirectory,
    *apps: ProbeApp,
    edge_kw: dict[str, Any] | None = None,
    ws: str = "wsproto",
) -> AsyncIterator[tuple[TunnelEdge, list[TunnelConnector], httpx2.AsyncClient, str]]:
    """An edge with one connector per app, and an httpx2 client routed through the edge."""
    edge = TunnelEdge(directory, **{"connect_wait_s": 2.0, **(edge_kw or {})})
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(running_edge(edge, ws=ws))
        connectors = []
        for app in apps or (ProbeApp(),):
            connector = TunnelConnector(url, TOKEN, app, pki.server_ssl())
            connectors.append(await stack.enter_async_context(running_connector(connector)))
        client = await stack.enter_async_context(
            httpx2.AsyncClient(transport=edge.transport(), timeout=httpx2.Timeout(10))
        )
        yield edge, connectors, client, url


async def test_round_trip_over_http2_with_authority_and_path(pki: PKI, directory: FakeDirectory) -> None:
    async with tunnel(pki, directory) as (edge, _, client, _):
        assert edge.connections(TUNNEL_ID) == 1
        response = await client.post(f"{BASE}/echo?cursor=a%20b", content=b'{"jsonrpc":"2.0"}')
    assert response.status_code == 200
    assert response.http_version == "HTTP/2"
    assert response.content == b'{"jsonrpc":"2.0"}'
    assert response.headers["x-host"] == f"crm.{DOMAIN}"
    assert response.headers["x-path"] == "/echo"
    assert response.headers["x-query"] == "cursor=a%20b"
    assert "connection" not in response.headers


@pytest.mark.parametrize("ws", ["wsproto", "websockets-sansio"])
async def test_200_concurrent_requests_over_one_connection(
    pki: PKI, directory: FakeDirectory, ws: str
) -> None:
    app = ProbeApp()
    app.expect_in_flight = 200  # nobody is answered until all 200 are inside the app at once
    async with tunnel(pki, directory, app, ws=ws) as (edge, _, client, _):
        results: dict[int, httpx2.Response] = {}

        async def call(i: int) -> None:
            results[i] = await client.post(f"{BASE}/hold", content=f"request {i}".encode())

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(200):
                    tg.start_soon(call, i)
        assert edge.connections(TUNNEL_ID) == 1
    assert len(results) == 200
    assert all(r.status_code == 200 and r.content == f"request {i}".encode() for i, r in results.items())


async def test_10_mb_response_is_intact(pki: PKI, directory: FakeDirectory) -> None:
    size = 10 * 1024 * 1024
    async with tunnel(pki, directory) as (_, _, client, _):
        response = await client.get(f"{BASE}/big?n={size}")
    assert response.status_code == 200
    assert len(response.content) == size
    assert sha256(response.content) == sha256(pattern(size))


async def test_request_body_is_streamed_not_buffered(pki: PKI, directory: FakeDirectory) -> None:
    app = ProbeApp()
    chunk = b"u" * 65536
    async with tunnel(pki, directory, app) as (_, _, client, _):

        async def body() -> AsyncIterator[bytes]:
            yield chunk
            # The rest is only produced once the app has the first chunk: a transport that
            # buffered the whole body first would deadlock here.
            with anyio.fail_after(5):
                await app.first_chunk.wait()
            for _ in range(79):
                yield chunk

        response = await client.post(f"{BASE}/upload", content=body())
    total, digest = response.text.split()
    assert int(total) == 80 * 65536
    assert digest == sha256(chunk * 80)


async def test_sse_events_are_flushed_as_they_are_sent(pki: PKI, directory: FakeDirectory) -> None:
    app = ProbeApp()
    async with (
        tunnel(pki, directory, app) as (_, _, client, _),
        client.stream("GET", f"{BASE}/sse") as response,
    ):
        assert response.headers["content-type"] == "text/event-stream"
        events = []
        async for event in httpx2.EventSource(response):
            events.append(event.data)
            if len(events) == 1:
                # The first event arrived while the server is still holding the second.
                assert app.sse_sent == [1]
                app.sse_gate.set()
    assert events == ["one", "two"]
    assert app.sse_sent == [1, 2]


async def test_a_client_that_stops_reading_cancels_the_stream(pki: PKI, directory: FakeDirectory) -> None:
    app = ProbeApp()
    async with tunnel(pki, directory, app) as (_, connectors, client, _):
        async with client.stream("GET", f"{BASE}/endless") as response:
            async for _ in response.aiter_raw():
                break
        with anyio.fail_after(5):
            await app.disconnected.wait()
        # The connection survives and serves the next request.
        assert (await client.post(f"{BASE}/echo", content=b"next")).content == b"next"
        assert connectors[0].connected


async def test_app_failure_is_a_500_on_that_stream_only(pki: PKI, directory: FakeDirectory) -> None:
    async with tunnel(pki, directory) as (_, connectors, client, _):
        assert (await client.get(f"{BASE}/boom")).status_code == 500
        assert (await client.get(f"{BASE}/nothing")).status_code == 404
        assert (await client.post(f"{BASE}/echo", content=b"ok")).content == b"ok"
        assert connectors[0].connected


async def test_no_gateway_fails_fast_and_clearly(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory, connect_wait_s=0.2)
    async with running_edge(edge), httpx2.AsyncClient(transport=edge.transport()) as client:
        with (
            anyio.fail_after(5),
            pytest.raises(httpx2.ConnectError, match=f"tunnel {TUNNEL_ID} has no connected gateway") as info,
        ):
            await client.get(f"{BASE}/echo")
    assert isinstance(info.value.__cause__, NoGateway)  # what the caller can classify on


async def test_a_request_waits_briefly_for_a_gateway_that_is_connecting(
    pki: PKI, directory: FakeDirectory
) -> None:
    edge = TunnelEdge(directory, connect_wait_s=5)
    async with running_edge(edge) as url, httpx2.AsyncClient(transport=edge.transport()) as client:
        results: list[httpx2.Response] = []
        answered = anyio.Event()

        async def call() -> None:
            results.append(await client.post(f"{BASE}/echo", content=b"waited"))
            answered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()  # the request is now waiting for a gateway
            assert not results
            async with running_connector(TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())):
                with anyio.fail_after(5):
                    await answered.wait()
    assert results[0].content == b"waited"


async def test_hosts_outside_every_tunnel_are_not_tunnelled(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory, connect_wait_s=0.1)
    seen: list[str] = []

    def fallback(request: httpx2.Request) -> httpx2.Response:
        seen.append(str(request.url))
        return httpx2.Response(200, text="direct")

    async with running_edge(edge):
        async with httpx2.AsyncClient(transport=edge.transport()) as client:
            with pytest.raises(httpx2.ConnectError, match="not under any tunnel domain"):
                await client.get("https://example.test/mcp")
            # A look-alike suffix is not a subdomain.
            with pytest.raises(httpx2.ConnectError, match="not under any tunnel domain"):
                await client.get(f"https://evil{DOMAIN}/mcp")
        transport = edge.transport(fallback=httpx2.MockTransport(fallback))
        async with httpx2.AsyncClient(transport=transport) as client:
            assert (await client.get("https://example.test/mcp")).text == "direct"
            # A tunnel host never falls back, even with no gateway connected.
            with pytest.raises(httpx2.ConnectError, match="no connected gateway"):
                await client.get(f"{BASE}/mcp", timeout=5)
    assert seen == ["https://example.test/mcp"]


async def test_wrong_token_is_refused_and_never_logged(
    pki: PKI, directory: FakeDirectory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit = AuditLog(tmp_path / "edge-audit.jsonl", fsync=False)
    edge = TunnelEdge(directory, audit=audit)
    wrong = "tok-wrong-4411c0ffee"
    async with running_edge(edge) as url:
        connector = TunnelConnector(url, wrong, ProbeApp(), pki.server_ssl())
        with anyio.fail_after(5), pytest.raises(TunnelAuthRejected, match="invalid tunnel token") as info:
            await connector.run()
        assert info.value.status == 401
        assert edge.connections(TUNNEL_ID) == 0
    audit.close()
    text = (tmp_path / "edge-audit.jsonl").read_text()
    assert "tunnel.connection.refused" in text
    assert wrong not in text and TOKEN not in text
    assert wrong not in caplog.text and TOKEN not in caplog.text
    assert verify_file(tmp_path / "edge-audit.jsonl").ok
    assert wrong not in repr(connector)


async def test_revoked_token_closes_after_grace_and_drains_in_flight(
    pki: PKI, directory: FakeDirectory
) -> None:
    app = ProbeApp()
    app.expect_in_flight = 1
    async with tunnel(pki, directory, app) as (edge, connectors, client, url):
        async with anyio.create_task_group() as tg:
            responses: list[httpx2.Response] = []

            async def slow_call() -> None:
                responses.append(await client.post(f"{BASE}/slow"))

            tg.start_soon(slow_call)
            with anyio.fail_after(5):
                await app.all_in.wait()
            directory.rotate(TOKEN, "tok-new", "tokid-2")
            await edge.revoke_token(TUNNEL_ID, "tokid-1", grace_s=0.05)
            # After the grace the connection takes no new requests...
            with anyio.fail_after(5):
                await edge.wait_connections(TUNNEL_ID, lambda n: n == 0)
            assert connectors[0].connected, "the in-flight stream keeps the connection open"
            app.release.set()
        assert responses[0].status_code == 200
        with anyio.fail_after(5):
            await connectors[0].wait_closed()
        # ...and the old token no longer opens connections.
        with anyio.fail_after(5), pytest.raises(TunnelAuthRejected):
            await TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl()).run()
        async with running_connector(TunnelConnector(url, "tok-new", app, pki.server_ssl())):
            assert (await client.post(f"{BASE}/echo", content=b"new")).content == b"new"


async def test_revoked_connection_reports_why(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory)
    async with running_edge(edge) as url:
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())
        async with anyio.create_task_group() as tg:
            failures: list[BaseException] = []

            async def run() -> None:
                try:
                    await connector.run()
                except TunnelClosed as exc:
                    failures.append(exc)

            tg.start_soon(run)
            with anyio.fail_after(5):
                await edge.wait_connections(TUNNEL_ID, lambda n: n == 1)
            await edge.revoke_token(TUNNEL_ID, "tokid-1", grace_s=0)
        assert len(failures) == 1
        assert isinstance(failures[0], TunnelClosed)


async def test_untrusted_gateway_certificate_is_refused(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory, connect_wait_s=0.2)
    async with running_edge(edge) as url:
        rogue = TunnelConnector(url, TOKEN, ProbeApp(), pki.rogue_ssl())
        # The gateway learns why from the TLS alert, not just that the link closed.
        with anyio.fail_after(5), pytest.raises(GatewayCertificateRejected, match="edge does not trust"):
            await rogue.run()
        assert edge.connections(TUNNEL_ID) == 0
        async with httpx2.AsyncClient(transport=edge.transport()) as client:
            with pytest.raises(httpx2.ConnectError, match="certificate is not trusted"):
                await client.get(f"{BASE}/echo")
        # Control: the genuine gateway, same token, same edge, is accepted.
        async with running_connector(TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())):
            assert edge.connections(TUNNEL_ID) == 1


async def test_tunnel_without_a_registered_ca_carries_nothing(pki: PKI, directory: FakeDirectory) -> None:
    directory.cas[TUNNEL_ID] = []
    edge = TunnelEdge(directory, connect_wait_s=5)
    async with running_edge(edge) as url:
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())
        with anyio.fail_after(5), pytest.raises(TunnelRefused, match="no registered CA certificate") as info:
            await connector.run()
        assert info.value.status == 409
        async with httpx2.AsyncClient(transport=edge.transport()) as client:
            with (
                anyio.fail_after(2),
                pytest.raises(httpx2.ConnectError, match="no registered CA certificate") as refused,
            ):
                await client.get(f"{BASE}/echo")
        assert isinstance(refused.value.__cause__, NoTrustedCertificate)


async def test_malformed_frame_closes_only_that_connection(pki: PKI, directory: FakeDirectory) -> None:
    a, b = ProbeApp("a"), ProbeApp("b")
    async with tunnel(pki, directory, a, b) as (edge, connectors, client, _):
        assert edge.connections(TUNNEL_ID) == 2
        victim = connectors[0]
        conn = victim._conn
        assert conn is not None
        # A DATA frame on a stream that was never opened, sent through the real inner TLS.
        conn.tls.write(DataFrame(7, data=b"x" * 100).serialize())
        conn.wake_writer()
        with anyio.fail_after(5):
            await victim.wait_closed()
        assert edge.connections(TUNNEL_ID) == 1
        for _ in range(5):
            response = await client.post(f"{BASE}/echo", content=b"still here")
            assert response.content == b"still here"
            assert response.headers["x-gateway"] == "b"


async def test_garbage_instead_of_tls_closes_only_that_connection(pki: PKI, directory: FakeDirectory) -> None:
    async with tunnel(pki, directory, ProbeApp("a"), ProbeApp("b")) as (edge, connectors, client, _):
        link = connectors[0]._conn.link  # type: ignore[union-attr]
        await link.send(b"\x16\x03\x03\x00\x05garbage that is not a TLS record")
        with anyio.fail_after(5):
            await connectors[0].wait_closed()
            await edge.wait_connections(TUNNEL_ID, lambda n: n == 1)
        assert (await client.post(f"{BASE}/echo", content=b"ok")).headers["x-gateway"] == "b"


async def test_dead_link_is_detected_on_both_ends(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory, ping_interval_s=0.05, dead_after_s=0.3)
    async with running_edge(edge) as url:
        port = int(url.split(":")[2].split("/")[0])
        forwarder = Forwarder(port)
        async with tcp_server(forwarder.handle) as relay_port:
            relay_url = url.replace(f":{port}/", f":{relay_port}/")
            connector = TunnelConnector(
                relay_url, TOKEN, ProbeApp(), pki.server_ssl(), ping_interval_s=0.05, dead_after_s=0.3
            )
            async with anyio.create_task_group() as tg:
                outcome: list[BaseException] = []

                async def run() -> None:
                    try:
                        await connector.run()
                    except TunnelClosed as exc:
                        outcome.append(exc)

                tg.start_soon(run)
                with anyio.fail_after(5):
                    await edge.wait_connections(TUNNEL_ID, lambda n: n == 1)
                forwarder.frozen = True  # packets vanish; neither TCP end sees a close
                with anyio.fail_after(5):
                    await edge.wait_connections(TUNNEL_ID, lambda n: n == 0)
            assert outcome and "dead" in str(outcome[0])


async def test_https_proxy_connect(pki: PKI, directory: FakeDirectory) -> None:
    proxy = ConnectProxy(require_auth=base64.b64encode(b"gw:s3cret"))
    edge = TunnelEdge(directory)
    async with running_edge(edge) as url, tcp_server(proxy.handle) as proxy_port:
        env = {"HTTPS_PROXY": f"http://gw:s3cret@127.0.0.1:{proxy_port}", "NO_PROXY": "internal.test"}
        chosen = proxy_from_env(url, env)
        assert chosen == env["HTTPS_PROXY"]
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl(), proxy=chosen)
        async with running_connector(connector), httpx2.AsyncClient(transport=edge.transport()) as client:
            assert (await client.post(f"{BASE}/echo", content=b"via proxy")).content == b"via proxy"
        edge_authority = url.split("/")[2].encode()
        assert proxy.requests[0].startswith(b"CONNECT " + edge_authority + b" HTTP/1.1\r\n")
        # The proxy saw the CONNECT, never the tunnel token (that is inside the tunnelled bytes).
        assert TOKEN.encode() not in proxy.requests[0]
        # A proxy that wants other credentials: a clear refusal, retryable.
        bad = TunnelConnector(
            url, TOKEN, ProbeApp(), pki.server_ssl(), proxy=f"http://127.0.0.1:{proxy_port}"
        )
        with anyio.fail_after(5), pytest.raises(TunnelRefused, match="407") as info:
            await bad.run()
        assert "s3cret" not in str(info.value)


def test_no_proxy_is_honoured() -> None:
    env = {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "localhost,.corp.test,10.0.0.0/8,edge.test:8443"}
    assert proxy_from_env("wss://api.example.test/v1/tunnels/connect", env) == "http://proxy:3128"
    assert proxy_from_env("wss://edge.corp.test/v1/tunnels/connect", env) is None
    assert proxy_from_env("wss://corp.test/v1/tunnels/connect", env) is None
    assert proxy_from_env("ws://10.1.2.3:8080/v1/tunnels/connect", env) is None
    assert proxy_from_env("wss://edge.test:8443/", env) is None
    assert proxy_from_env("wss://edge.test/", env) == "http://proxy:3128"
    assert proxy_from_env("wss://x.test/", {"https_proxy": "http://p:1", "no_proxy": "*"}) is None
    assert proxy_from_env("wss://x.test/", {}) is None


async def test_least_loaded_connection_is_chosen(pki: PKI, directory: FakeDirectory) -> None:
    a, b = ProbeApp("a"), ProbeApp("b")
    async with tunnel(pki, directory, a, b) as (_, _, client, _):
        served: list[str] = []

        async def call() -> None:
            served.append((await client.post(f"{BASE}/slow")).text)

        a.expect_in_flight = b.expect_in_flight = 5
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(call)
            with anyio.fail_after(5):
                await a.all_in.wait()
                await b.all_in.wait()
            a.release.set()
            b.release.set()
    assert sorted(served) == ["a"] * 5 + ["b"] * 5


async def test_drain_finishes_in_flight_and_moves_new_requests(pki: PKI, directory: FakeDirectory) -> None:
    a, b = ProbeApp("a"), ProbeApp("b")
    a.expect_in_flight = 1
    async with tunnel(pki, directory, a, b) as (edge, connectors, client, _):
        slow: list[httpx2.Response] = []
        async with anyio.create_task_group() as tg:

            async def slow_call() -> None:
                slow.append(await client.post(f"{BASE}/slow"))

            tg.start_soon(slow_call)
            with anyio.fail_after(5):
                await a.all_in.wait()

            async def drain() -> None:
                await connectors[0].drain(5)

            tg.start_soon(drain)
            with anyio.fail_after(5):
                await edge.wait_connections(TUNNEL_ID, lambda n: n == 1)
            # New requests go to the other gateway while the drained one finishes its work.
            for _ in range(3):
                assert (await client.post(f"{BASE}/echo", content=b"x")).headers["x-gateway"] == "b"
            a.release.set()
        assert slow[0].text == "a"
        assert not connectors[0].connected


async def test_connector_run_returns_after_drain(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory)
    async with running_edge(edge) as url:
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())
        async with anyio.create_task_group() as tg:
            await tg.start(connector.run)
            await connector.drain(1)
        assert not connector.connected
        with pytest.raises(Exception, match="runs once"):
            await connector.run()


async def test_edge_that_is_not_running_refuses(pki: PKI, directory: FakeDirectory) -> None:
    from tests.tunnel.helpers import edge_app, serve_asgi

    edge = TunnelEdge(directory)
    async with serve_asgi(edge_app(edge)) as port:
        connector = TunnelConnector(
            f"ws://127.0.0.1:{port}/v1/tunnels/connect", TOKEN, ProbeApp(), pki.server_ssl()
        )
        with anyio.fail_after(5), pytest.raises(TunnelRefused) as info:
            await connector.run()
    assert info.value.status == 503


async def test_unreachable_edge_is_a_retryable_error(pki: PKI) -> None:
    from inwall.tunnel import TunnelUnavailable

    async with tcp_server(lambda client: client.aclose()) as port:
        pass  # the port is closed again: nothing listens there now
    connector = TunnelConnector(
        f"ws://127.0.0.1:{port}/v1/tunnels/connect", TOKEN, ProbeApp(), pki.server_ssl()
    )
    with anyio.fail_after(5), pytest.raises(TunnelUnavailable):
        await connector.run()


async def test_connection_lost_mid_response_is_a_read_error(pki: PKI, directory: FakeDirectory) -> None:
    app = ProbeApp()
    async with tunnel(pki, directory, app) as (_, connectors, client, _):
        with pytest.raises(httpx2.ReadError, match="tunnel connection lost"):
            async with client.stream("GET", f"{BASE}/endless") as response:
                async for _ in response.aiter_raw():
                    connectors[0]._conn.close()  # type: ignore[union-attr]


async def test_audit_trail_of_a_connection(pki: PKI, directory: FakeDirectory, tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    async with tunnel(pki, directory, edge_kw={"audit": audit}) as (edge, _, client, _):
        await client.post(f"{BASE}/echo", content=b"x")
        await edge.revoke_token(TUNNEL_ID, "tokid-1", grace_s=0)
        with anyio.fail_after(5):
            await edge.wait_connections(TUNNEL_ID, lambda n: n == 0)
    audit.close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert "tunnel.token.revoked" in kinds
    assert "tunnel.connection.closed" in kinds
    closed = next(r for r in records if r["kind"] == "tunnel.connection.closed")
    assert closed["tunnel_id"] == TUNNEL_ID and closed["outcome"] == "token revoked"
    assert TOKEN not in (tmp_path / "audit.jsonl").read_text()


async def test_read_timeout_is_an_httpx2_timeout_and_resets_only_that_stream(
    pki: PKI, directory: FakeDirectory
) -> None:
    app = ProbeApp()
    app.expect_in_flight = 1
    async with tunnel(pki, directory, app) as (_, connectors, client, _):
        with pytest.raises(httpx2.ReadTimeout, match="tunnel read timed out"):
            await client.post(f"{BASE}/slow", timeout=httpx2.Timeout(5, read=0.1))
        app.release.set()
        assert (await client.post(f"{BASE}/echo", content=b"after")).content == b"after"
        assert connectors[0].connected


async def test_connections_per_tunnel_are_capped(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory, max_connections_per_tunnel=1)
    async with (
        running_edge(edge) as url,
        running_connector(TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())),
    ):
        extra = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())
        with anyio.fail_after(5), pytest.raises(TunnelRefused, match="already has 1 connections") as info:
            await extra.run()
        assert info.value.status == 429
        assert edge.connections(TUNNEL_ID) == 1


async def test_directory_outage_is_a_retryable_refusal(pki: PKI, directory: FakeDirectory) -> None:
    from inwall.errors import Unavailable

    class Down(FakeDirectory):
        async def authenticate(self, token: str) -> None:
            raise Unavailable("database is down")

    edge = TunnelEdge(Down())
    async with running_edge(edge) as url:
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl())
        with anyio.fail_after(5), pytest.raises(TunnelRefused) as info:
            await connector.run()
    assert info.value.status == 503


async def test_the_app_sees_which_tunnel_stream_it_serves(pki: PKI, directory: FakeDirectory) -> None:
    app = ProbeApp()
    async with tunnel(pki, directory, app) as (_, _, client, _):
        await client.post(f"{BASE}/echo", content=b"x")
    extension = app.seen[-1]["extensions"]["inwall.tunnel"]
    assert extension["stream_id"] % 2 == 1 and extension["connection"].startswith("gateway->")


async def test_disconnect_tunnel_closes_every_connection(pki: PKI, directory: FakeDirectory) -> None:
    async with tunnel(pki, directory, ProbeApp("a"), ProbeApp("b")) as (edge, connectors, _, _):
        await edge.disconnect_tunnel(TUNNEL_ID, grace_s=0, reason="certificate archived")
        with anyio.fail_after(5):
            await edge.wait_connections(TUNNEL_ID, lambda n: n == 0)
            for connector in connectors:
                await connector.wait_closed()


async def test_directory_failure_while_routing_is_a_connect_error(pki: PKI, directory: FakeDirectory) -> None:
    from inwall.errors import Unavailable

    class Flaky(FakeDirectory):
        async def tunnel_for_host(self, host: str) -> None:
            raise Unavailable("database is down")

    edge = TunnelEdge(Flaky())
    async with running_edge(edge), httpx2.AsyncClient(transport=edge.transport()) as client:
        with pytest.raises(httpx2.ConnectError, match="database is down"):
            await client.get(f"{BASE}/echo")


@pytest.mark.parametrize("via_proxy", [False, True])
async def test_wss_with_outer_tls_and_optional_proxy(
    pki: PKI, directory: FakeDirectory, via_proxy: bool
) -> None:
    import ssl

    outer = ssl.create_default_context(cadata=pki.outer_ca_pem)
    edge = TunnelEdge(directory)
    proxy = ConnectProxy()
    async with running_edge(edge, tls=pki) as url, tcp_server(proxy.handle) as proxy_port:
        assert url.startswith("wss://")
        chosen = f"http://127.0.0.1:{proxy_port}" if via_proxy else None
        connector = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl(), client_ssl=outer, proxy=chosen)
        async with running_connector(connector), httpx2.AsyncClient(transport=edge.transport()) as client:
            assert (await client.post(f"{BASE}/echo", content=b"over wss")).content == b"over wss"
        assert len(proxy.requests) == (1 if via_proxy else 0)
        # Without the web CA the gateway refuses the outer TLS: it never talks to an impostor edge.
        impostor = TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl(), proxy=chosen)
        with anyio.fail_after(5), pytest.raises(TunnelUnavailable):
            await impostor.run()
