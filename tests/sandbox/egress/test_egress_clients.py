"""Real clients (curl, httpx) through bridge -> unix socket -> proxy -> origin, all on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import httpx2
import pytest

from .helpers import CRED, TLS_NAME, TlsMaterial, http_origin, running_bridge, running_proxy, tls_origin

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]

CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


async def curl(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(20):
        result = await anyio.run_process(
            ["curl", "--silent", "--show-error", "--max-time", "10", *args], check=False, env=CLEAN_ENV
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_curl_http_proxy_allowed_and_denied(sock_dir: Path) -> None:
    async with http_origin() as origin:
        names = {"allowed.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        async with running_proxy(sock_dir, ["allowed.test"], names=names) as (proxy, events):
            async with running_bridge(proxy) as bridge:
                proxy_url = f"http://inwall:{CRED}@127.0.0.1:{bridge.addresses[0][1]}"
                ok = await curl("-x", proxy_url, f"http://allowed.test:{origin.port}/hi")
                denied = await curl("-x", proxy_url, "-i", f"http://other.test:{origin.port}/")
                no_cred = await curl(
                    "-x", f"http://127.0.0.1:{bridge.addresses[0][1]}", "-i", "http://allowed.test/"
                )
            await events.wait(3)
    assert ok == (0, "hello from origin\n", "")
    code, out, _ = denied
    assert code == 0 and out.startswith("HTTP/1.1 403 Forbidden")
    assert "x-inwall-denied-reason: other.test:" in out.lower()
    assert "inwall sandbox: egress to other.test" in out
    assert no_cred[1].startswith("HTTP/1.1 407")
    assert origin.connections == 1


async def test_curl_https_through_connect(sock_dir: Path, tls_material: TlsMaterial) -> None:
    async with tls_origin(tls_material) as origin:
        names = {TLS_NAME: ["127.0.0.1"], "evil.test": ["127.0.0.1"]}
        async with running_proxy(sock_dir, [TLS_NAME], names=names) as (proxy, events):
            async with running_bridge(proxy) as bridge:
                proxy_url = f"http://inwall:{CRED}@127.0.0.1:{bridge.addresses[0][1]}"
                ok = await curl(
                    "-x",
                    proxy_url,
                    "--cacert",
                    str(tls_material.cert_pem),
                    f"https://{TLS_NAME}:{origin.port}/",
                )
                denied = await curl("-x", proxy_url, "-k", f"https://evil.test:{origin.port}/")
            await events.wait(2)
    assert ok == (0, "hello from origin\n", "")
    code, _out, err = denied
    assert code != 0 and "403" in err
    assert [e.decision for e in events.items] == ["allowed", "denied"]
    assert origin.connections == 1


async def test_curl_socks5h_allowed_and_denied(sock_dir: Path) -> None:
    async with http_origin() as origin:
        names = {"allowed.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]}
        async with running_proxy(sock_dir, ["allowed.test"], names=names) as (proxy, events):
            async with running_bridge(proxy) as bridge:
                socks = f"socks5h://inwall:{CRED}@127.0.0.1:{bridge.addresses[1][1]}"
                ok = await curl("-x", socks, f"http://allowed.test:{origin.port}/")
                denied = await curl("-x", socks, f"http://other.test:{origin.port}/")
                wrong = await curl(
                    "-x", f"socks5h://inwall:nope@127.0.0.1:{bridge.addresses[1][1]}", "http://allowed.test/"
                )
            await events.wait(3)
    assert ok == (0, "hello from origin\n", "")
    assert denied[0] == 97 and "(2)" in denied[2]  # CURLE_PROXY; reply 0x02: not allowed by ruleset
    assert wrong[0] == 97 and "rejected" in denied[2] + wrong[2]
    assert [e.decision for e in events.items] == ["allowed", "denied", "denied"]
    assert origin.connections == 1


async def test_httpx_through_the_bridge(sock_dir: Path, tls_material: TlsMaterial) -> None:
    async with tls_origin(tls_material) as tls, http_origin() as plain:
        names = {TLS_NAME: ["127.0.0.1"], "plain.test": ["127.0.0.1"]}
        async with running_proxy(sock_dir, [TLS_NAME, "plain.test"], names=names) as (proxy, events):
            async with running_bridge(proxy) as bridge:
                proxy_url = f"http://inwall:{CRED}@127.0.0.1:{bridge.addresses[0][1]}"
                async with httpx2.AsyncClient(
                    proxy=proxy_url, verify=tls_material.client_context(), trust_env=False, timeout=10
                ) as client:
                    secure = await client.get(f"https://{TLS_NAME}:{tls.port}/")
                    plain_resp = await client.post(f"http://plain.test:{plain.port}/x", content=b"DATA")
                    denied = await client.get(f"http://elsewhere.test:{plain.port}/")
            await events.wait(3)
    assert secure.status_code == 200 and secure.text == "hello from origin\n"
    assert plain_resp.status_code == 200 and plain_resp.text == "hello from origin\nDATA"
    assert denied.status_code == 403
    assert (
        denied.headers["x-inwall-denied-reason"]
        == f"elsewhere.test:{plain.port} is not in network.allowedDomains"
    )
