"""Flow control end to end: a consumer that stops reading stops the producer, on both sides.

The two connection drivers run over the in-memory link twin (bounded, like a socket buffer), so
``wait_all_tasks_blocked`` tells exactly when everything has stalled.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import httpx2
import pytest

from inwall.tunnel._client import ClientConnection
from inwall.tunnel._conn import Stream
from inwall.tunnel._server import ServerConnection
from inwall.tunnel.errors import TunnelClosed
from inwall.tunnel.links import MemoryLink, memory_link_pair
from inwall.tunnel.mux import MuxSettings
from inwall.tunnel.tls import TLSEndpoint, edge_client_context
from tests.tunnel.helpers import DOMAIN, PKI, ProbeApp, pattern, sha256

pytestmark = pytest.mark.anyio

KiB, MiB = 1024, 1024 * 1024
SETTINGS = MuxSettings(stream_window=256 * KiB, connection_window=512 * KiB, max_frame_size=64 * KiB)
LINK_MESSAGES = 4
MESSAGE = 256 * KiB
# What may legitimately be in flight: the receiver's window, the sender's queue high-water
# mark (1 MiB), the bounded link, and one application chunk.
BOUND = SETTINGS.connection_window + 1 * MiB + LINK_MESSAGES * MESSAGE + 2 * 64 * KiB


@asynccontextmanager
async def memory_tunnel(pki: PKI, app: ProbeApp) -> AsyncIterator[ClientConnection]:
    async with memory_pair(pki, app) as (edge, _):
        yield edge


@asynccontextmanager
async def memory_pair(pki: PKI, app: ProbeApp) -> AsyncIterator[tuple[ClientConnection, ServerConnection]]:
    """Both drivers over the bounded in-memory link: (the edge's end, the gateway's end)."""
    edge_end, gateway_end = memory_link_pair(max_message_bytes=MESSAGE, buffer_messages=LINK_MESSAGES)
    edge = ClientConnection(
        edge_end,
        TLSEndpoint(edge_client_context([pki.ca_pem]), server_side=False, server_hostname=DOMAIN),
        settings=SETTINGS,
        ping_interval_s=60,
        dead_after_s=120,
        max_message_bytes=MESSAGE,
        label="edge",
    )
    gateway = ServerConnection(
        gateway_end,
        TLSEndpoint(pki.server_ssl(), server_side=True),
        app,
        settings=SETTINGS,
        ping_interval_s=60,
        dead_after_s=120,
        max_message_bytes=MESSAGE,
        label="gateway",
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(gateway.run)
        with anyio.fail_after(5):
            await tg.start(edge.run)
        yield edge, gateway
        tg.cancel_scope.cancel()


async def test_a_response_nobody_reads_stalls_the_app(pki: PKI) -> None:
    app = ProbeApp()
    size = 32 * MiB
    async with memory_tunnel(pki, app) as edge:
        request = httpx2.Request("GET", f"https://crm.{DOMAIN}/big?n={size}")
        response = await edge.request(request)
        await anyio.wait_all_tasks_blocked()
        stalled_at = app.sent_bytes
        assert 0 < stalled_at <= BOUND, f"the app got {stalled_at} bytes out with no reader"
        # Reading resumes the flow, and everything arrives.
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    assert len(body) == size and sha256(body) == sha256(pattern(size))


async def test_an_upload_the_app_does_not_read_stalls_the_client(pki: PKI) -> None:
    app = ProbeApp()
    produced = 0
    release = anyio.Event()

    async def never_reading(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        await release.wait()
        await app(scope, receive, send)

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        for _ in range(512):  # 32 MiB
            produced += 64 * KiB
            yield b"u" * (64 * KiB)

    async with memory_tunnel(pki, never_reading) as edge:  # type: ignore[arg-type]
        request = httpx2.Request("POST", f"https://crm.{DOMAIN}/upload", content=body())
        async with anyio.create_task_group() as tg:
            results: list[httpx2.Response] = []

            async def send() -> None:
                results.append(await edge.request(request))

            tg.start_soon(send)
            await anyio.wait_all_tasks_blocked()
            assert 0 < produced <= BOUND, f"the client produced {produced} bytes nobody read"
            release.set()
        response = results[0]
        await response.aread()
    assert response.text.split()[0] == str(32 * MiB)


@pytest.mark.parametrize(
    "headers",
    [
        [(b":method", b"CONNECT"), (b":authority", DOMAIN.encode())],
        [(b":method", b"GET"), (b":scheme", "h\u00e9".encode()), (b":authority", b"x"), (b":path", b"/")],
    ],
    ids=["connect", "non-ascii-scheme"],
)
async def test_a_request_answered_400_releases_its_stream_and_window(
    pki: PKI, headers: list[tuple[bytes, bytes]]
) -> None:
    # Requests the gateway cannot turn into an ASGI scope get a 400; their stream (and the
    # flow-control window of the body they carry) must be given back like any other's.
    async with memory_pair(pki, ProbeApp()) as (edge, gateway):
        stream = Stream(edge.mux.open_stream(headers, end_stream=False))
        edge.streams[stream.id] = stream
        with anyio.fail_after(5):
            await edge.send_stream_data(stream, b"b" * (64 * KiB), end_stream=True)
            while stream.response is None:
                await stream.wait()
        assert stream.response.status == 400
        await anyio.wait_all_tasks_blocked()
        assert gateway.streams == {}
        edge.release(stream)
        # With nothing left in flight, a drain finishes at once instead of waiting out its timeout.
        with anyio.fail_after(5):
            await gateway.drain(timeout_s=60)


class DeafLink:
    """The edge's end of the link, which stops reading on request (a hung peer process)."""

    def __init__(self, inner: MemoryLink) -> None:
        self.inner = inner
        self.deaf = False
        self.hearing = anyio.Event()

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def receive(self) -> bytes:
        while self.deaf:
            await self.hearing.wait()
        return await self.inner.receive()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.aclose(code, reason)

    def hear(self) -> None:
        self.deaf = False
        self.hearing.set()


async def test_a_peer_that_stops_reading_cannot_wedge_a_response_forever(pki: PKI) -> None:
    # The gateway flushes a response in the stream's own task, shielded (bytes taken from TLS
    # must reach the link whole), so the keepalive's cancellation cannot end that flush: it
    # needs its own limit, or the connection's task group never finishes.
    edge_end, gateway_end = memory_link_pair(max_message_bytes=16 * KiB, buffer_messages=2)
    deaf = DeafLink(edge_end)
    edge = ClientConnection(
        deaf,
        TLSEndpoint(edge_client_context([pki.ca_pem]), server_side=False, server_hostname=DOMAIN),
        settings=SETTINGS,
        ping_interval_s=60,
        dead_after_s=120,
        max_message_bytes=16 * KiB,
        label="edge",
    )
    gateway = ServerConnection(
        gateway_end,
        TLSEndpoint(pki.server_ssl(), server_side=True),
        ProbeApp(),
        settings=SETTINGS,
        ping_interval_s=0.05,
        dead_after_s=0.5,
        max_message_bytes=16 * KiB,
        label="gateway",
    )
    ended: list[BaseException] = []
    gateway_done = anyio.Event()

    async def run_gateway() -> None:
        try:
            await gateway.run()
        except TunnelClosed as exc:
            ended.append(exc)
        gateway_done.set()

    async def request() -> None:
        with contextlib.suppress(httpx2.TransportError):
            await edge.request(httpx2.Request("GET", f"https://crm.{DOMAIN}/big?n={4 * MiB}"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_gateway)
        with anyio.fail_after(5):
            await tg.start(edge.run)
        deaf.deaf = True  # the edge still sends (the request goes out) but reads nothing more
        tg.start_soon(request)
        with anyio.move_on_after(10):
            await gateway_done.wait()
        stuck = not gateway_done.is_set()
        deaf.hear()  # unwedge a flush that ignored its limit, so the test reports instead of hanging
        with anyio.fail_after(10):
            await gateway_done.wait()
        tg.cancel_scope.cancel()
    assert not stuck, "the gateway's shielded flush never gave up on a peer that reads nothing"
    assert len(ended) == 1 and isinstance(gateway.failure, TunnelClosed)
