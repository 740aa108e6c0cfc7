"""One conformance suite for every link implementation: the in-memory twin and the real
WebSocket link (StarletteLink under uvicorn on 127.0.0.1 <-> WsprotoLink dialled by the gateway),
under both of uvicorn's WebSocket stacks."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request

from inwall.tunnel._dial import WsprotoLink, dial
from inwall.tunnel.errors import TunnelClosed, TunnelProtocolError
from inwall.tunnel.link import SUBPROTOCOL, LinkLimits, split_messages
from inwall.tunnel.links import LinkStream, StarletteLink, memory_link_pair
from tests.tunnel.helpers import serve_asgi

pytestmark = pytest.mark.anyio

MAX = 64 * 1024


@asynccontextmanager
async def real_pair(ws: str) -> AsyncIterator[tuple[LinkStream, LinkStream]]:
    """(edge end, gateway end) over a real WebSocket on 127.0.0.1."""
    handed = anyio.Event()
    done = anyio.Event()
    holder: list[StarletteLink] = []

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=SUBPROTOCOL)
        holder.append(StarletteLink(websocket, max_message_bytes=MAX))
        handed.set()
        await done.wait()

    app = Starlette(routes=[WebSocketRoute("/v1/tunnels/connect", endpoint)])
    async with serve_asgi(app, ws=ws, ws_max_size=4 * MAX) as port:
        gateway = await dial(f"ws://127.0.0.1:{port}/v1/tunnels/connect", "t", limits=LinkLimits(MAX))
        with anyio.fail_after(5):
            await handed.wait()
        try:
            yield holder[0], gateway
        finally:
            done.set()
            await gateway.aclose()


@asynccontextmanager
async def memory_pair() -> AsyncIterator[tuple[LinkStream, LinkStream]]:
    a, b = memory_link_pair(max_message_bytes=MAX)
    yield a, b
    await a.aclose()
    await b.aclose()


KINDS = ["memory", "uvicorn-wsproto", "uvicorn-websockets"]


def link_pair(kind: str):  # type: ignore[no-untyped-def]
    if kind == "memory":
        return memory_pair()
    return real_pair("wsproto" if kind == "uvicorn-wsproto" else "websockets-sansio")


async def _pump(sender: LinkStream, receiver: LinkStream, payload: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    got = bytearray()

    async def send_all() -> None:
        offset = 0
        while offset < len(payload):
            size = rng.randint(1, MAX)
            await sender.send(payload[offset : offset + size])
            offset += size

    async with anyio.create_task_group() as tg:
        tg.start_soon(send_all)
        with anyio.fail_after(10):
            while len(got) < len(payload):
                got += await receiver.receive()
    return bytes(got)


@pytest.mark.parametrize("kind", KINDS)
async def test_bytes_arrive_in_order_both_ways(kind: str) -> None:
    payload = random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    async with link_pair(kind) as (edge, gateway):
        assert await _pump(gateway, edge, payload, 2) == payload
        assert await _pump(edge, gateway, payload, 3) == payload


@pytest.mark.parametrize("kind", KINDS)
async def test_close_reaches_the_peer_with_its_code(kind: str) -> None:
    async with link_pair(kind) as (edge, gateway):
        await edge.aclose(1008, "token revoked")
        await edge.aclose(1000, "again")  # idempotent
        with anyio.fail_after(5), pytest.raises(TunnelClosed) as info:
            await gateway.receive()
        assert info.value.code == 1008


@pytest.mark.parametrize("kind", KINDS)
async def test_gateway_close_reaches_the_edge(kind: str) -> None:
    async with link_pair(kind) as (edge, gateway):
        await gateway.aclose(1001, "draining")
        with anyio.fail_after(5), pytest.raises(TunnelClosed) as info:
            await edge.receive()
        assert info.value.code == 1001


@pytest.mark.parametrize("kind", KINDS)
async def test_send_after_close_is_closed(kind: str) -> None:
    async with link_pair(kind) as (edge, gateway):
        await gateway.aclose()
        with pytest.raises(TunnelClosed):
            await gateway.send(b"late")
        await edge.aclose()


@pytest.mark.parametrize("ws", ["wsproto", "websockets-sansio"])
async def test_text_message_from_the_gateway_closes_the_link(ws: str) -> None:
    async with real_pair(ws) as (edge, gateway):
        assert isinstance(gateway, WsprotoLink)
        await gateway._write(gateway._ws._ws.send(__import__("wsproto").events.TextMessage(data="hi")))
        with anyio.fail_after(5), pytest.raises(TunnelProtocolError, match="text"):
            await edge.receive()
        with anyio.fail_after(5), pytest.raises(TunnelClosed) as info:
            await gateway.receive()
        assert info.value.code == 1003


@pytest.mark.parametrize("ws", ["wsproto", "websockets-sansio"])
async def test_oversized_message_from_the_gateway_closes_the_link(ws: str) -> None:
    async with real_pair(ws) as (edge, gateway):
        assert isinstance(gateway, WsprotoLink)
        gateway._ws.send_message(b"x" * (MAX + 1))  # bypass the sender's own split
        await gateway._write(gateway._ws.data_to_send())
        with anyio.fail_after(5), pytest.raises(TunnelProtocolError, match="limit"):
            await edge.receive()
        with anyio.fail_after(5), pytest.raises(TunnelClosed) as info:
            await gateway.receive()
        assert info.value.code == 1009


async def test_oversized_message_from_the_edge_closes_the_link() -> None:
    handed = anyio.Event()

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept(subprotocol=SUBPROTOCOL)
        await websocket.send_bytes(b"y" * (MAX + 1))
        handed.set()
        with anyio.fail_after(5):
            message = await websocket.receive()
        assert message["type"] == "websocket.disconnect"

    app = Starlette(routes=[WebSocketRoute("/v1/tunnels/connect", endpoint)])
    async with serve_asgi(app) as port:
        gateway = await dial(f"ws://127.0.0.1:{port}/v1/tunnels/connect", "t", limits=LinkLimits(MAX))
        with anyio.fail_after(5), pytest.raises(TunnelProtocolError, match="size limit"):
            while True:
                await gateway.receive()
        await gateway.aclose()


async def test_wsproto_server_twin_accepts_our_client() -> None:
    """The raw wsproto server is the reference the real edge must match (sanity for the suite)."""
    server = WSConnection(ConnectionType.SERVER)
    from inwall.tunnel.wsclient import WsClient

    client = WsClient(host="h", target="/v1/tunnels/connect", token="t")
    client.initiate()
    server.receive_data(client.data_to_send())
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
    assert client.accepted


def test_split_messages() -> None:
    assert split_messages(b"", 10) == []
    assert split_messages(b"abc", 10) == [b"abc"]
    assert split_messages(b"a" * 25, 10) == [b"a" * 10, b"a" * 10, b"a" * 5]
