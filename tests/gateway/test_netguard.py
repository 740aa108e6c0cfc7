"""allowed_ips is checked after DNS, at connect time, and the socket goes to the checked address."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import anyio
import httpx2
import pytest

from inwall.gateway.app import Gateway
from inwall.gateway.config import HttpRoute
from inwall.gateway.netguard import ForbiddenUpstream, GuardedTransport, address_allowed
from tests.gateway.conftest import DOMAIN, gateway_config, route_client, serve
from tests.gateway.servers.http_server import make_app

pytestmark = pytest.mark.anyio

LOOPBACK_EXCLUDED = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "192.168.0.0/16", "fc00::/7"))
LISTING = b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}'
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class CountingApp:
    def __init__(self) -> None:
        self.app = make_app(json_response=True, stateless_http=True)
        self.requests = 0

    async def __call__(self, scope: object, receive: object, send: object) -> None:
        if isinstance(scope, dict) and scope["type"] == "http":
            self.requests += 1
        await self.app(scope, receive, send)  # type: ignore[arg-type]


def test_address_allowed() -> None:
    nets = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "127.0.0.0/8", "::1/128"))
    assert address_allowed("10.1.2.3", nets) and address_allowed("::1", nets)
    assert not address_allowed("11.0.0.1", nets)
    assert address_allowed("::ffff:127.0.0.1", nets)  # a mapped address is judged as the IPv4 it reaches
    assert not address_allowed("::ffff:8.8.8.8", nets)
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    assert not address_allowed("0.0.0.0", everything) and not address_allowed("::", everything)
    assert not address_allowed("not-an-ip", nets)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["literal", "hostname"])
async def test_upstream_outside_allowed_ips_is_refused(tmp_path: Path, host: str) -> None:
    upstream = CountingApp()
    async with serve(upstream) as up:
        route = HttpRoute(name="crm", scheme="http", host=host, port=up)
        refused_config = gateway_config(tmp_path, routes={"crm": route}, allowed_ips=LOOPBACK_EXCLUDED)
        async with serve(Gateway(refused_config)) as port, route_client(port) as http:
            with anyio.fail_after(10):
                response = await http.post(f"https://crm.{DOMAIN}/mcp", content=LISTING, headers=HEADERS)
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert "outside the gateway's allowed_ips" in message and "127.0.0.1" in message
        assert upstream.requests == 0  # the attempt failed before any byte reached the upstream

        allowed_config = gateway_config(tmp_path, routes={"crm": route})  # default: loopback allowed
        async with serve(Gateway(allowed_config)) as port, route_client(port) as http:
            with anyio.fail_after(10):
                response = await http.post(f"https://crm.{DOMAIN}/mcp", content=LISTING, headers=HEADERS)
        assert response.status_code == 200 and upstream.requests == 1  # positive control


async def test_guard_connects_to_the_address_it_checked() -> None:
    """A resolver that answers differently on each call cannot rebind the connection."""
    answers = [["127.0.0.1"], ["10.255.255.1"]]
    asked: list[str] = []

    async def flipping(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[len(asked) - 1]

    upstream = CountingApp()
    async with serve(upstream) as up:
        transport = GuardedTransport([ipaddress.ip_network("127.0.0.0/8")], resolver=flipping)
        async with httpx2.AsyncClient(transport=transport) as http:
            with anyio.fail_after(10):
                response = await http.post(
                    f"http://upstream.internal:{up}/mcp", content=LISTING, headers=HEADERS
                )
        assert response.status_code in (200, 421) and upstream.requests == 1
        assert asked == ["upstream.internal"]  # resolved once; the socket went to 127.0.0.1


async def test_resolver_answer_outside_allowed_ips_is_refused() -> None:
    async def evil(host: str, port: int) -> list[str]:
        return ["169.254.169.254"]

    transport = GuardedTransport([ipaddress.ip_network("10.0.0.0/8")], resolver=evil)
    async with httpx2.AsyncClient(transport=transport) as http:
        with pytest.raises(ForbiddenUpstream, match=r"169\.254\.169\.254"):
            await http.get("http://metadata.internal/")
