"""Flow control end to end: a consumer that stops reading stops the producer, on both sides.

The two connection drivers run over the in-memory link twin (bounded, like a socket buffer), so
``wait_all_tasks_blocked`` tells exactly when everything has stalled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx2
import pytest

from inwall.tunnel._client import ClientConnection
from inwall.tunnel._server import ServerConnection
from inwall.tunnel.links import memory_link_pair
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
        yield edge
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
