"""Tunnel cost: MCP ``tools/call`` latency, 50 MB throughput and 200 concurrent calls, tunnel vs direct.

Run: ``python bench/bench_tunnel.py [--calls 400] [--mb 50] [--concurrent 200] [--ws websockets-sansio]``.

Every part runs in its own process, as in production:

* ``mcp``: a real ``mcp`` MCPServer over Streamable HTTP under uvicorn on 127.0.0.1
  (tools ``add`` and ``export(size)``; plus ``/raw?n=`` streaming n bytes, to see the
  transport without MCP's JSON work);
* ``gateway``: a TunnelConnector dialling the edge, serving a streaming reverse proxy to
  the MCP server (the gateway's hop; its policy layer belongs to ``inwall gateway``); the
  same proxy is also served on plain HTTP, to separate the cost of that hop from the tunnel.
  ``--hop lean`` (default) relays with h11 over pooled connections, ``--hop httpx2`` with an
  httpx2 client;
* this process: the edge (TunnelEdge under uvicorn) and the official ``mcp`` client.

Paths, measured interleaved in one run:

* ``direct``: client -> MCP server;
* ``proxy``: client -> reverse proxy -> MCP server (no tunnel: the extra hop alone);
* ``tunnel``: client -> edge transport -> WebSocket + inner TLS + HTTP/2 -> connector ->
  reverse proxy -> MCP server.

Targets (issue 4): tunnel adds <= 2 ms median per call, >= 50 % of direct throughput for a
50 MB response, zero errors at 200 concurrent calls. The machine has 2 cores shared by all
processes, so read ratios, and run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import h11
import httpx2
import uvicorn

DOMAIN = "bench.tunnels.test"
TOKEN = "bench-tunnel-token"
TUNNEL_ID = "tnl_bench"
HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"})


# --- roles that run in child processes ------------------------------------------------------------


def _listen() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say TCP; without it
    # every small response pays a 40 ms delayed-ACK stall (a trap for hand-bound sockets).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _serve_forever(app: Any, sock: socket.socket, **config: Any) -> None:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", **config))
    anyio.run(server.serve, [sock])


def role_mcp() -> None:
    from mcp.server.mcpserver import MCPServer
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    server = MCPServer("bench-crm", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(structured_output=False)
    def export(size: int) -> str:
        return "x" * size

    async def raw(request: Any) -> StreamingResponse:
        size = int(request.query_params["n"])
        block = b"r" * (256 * 1024)

        async def body() -> AsyncIterator[bytes]:
            left = size
            while left > 0:
                yield block[: min(left, len(block))]
                left -= len(block)

        return StreamingResponse(body(), headers={"content-length": str(size)})

    app = server.streamable_http_app()
    app.router.routes.append(Route("/raw", raw))
    sock = _listen()
    print(f"READY {sock.getsockname()[1]}", flush=True)
    _serve_forever(app, sock)


class LeanProxy:
    """A lean streaming reverse proxy (the gateway's hop): h11 over pooled keep-alive TCP connections.

    Request and response bodies are relayed chunk by chunk, so SSE flows as it is produced.
    It is the cheapest realistic hop; ``--hop httpx2`` uses an httpx2 client instead, which
    costs about half a millisecond more per call on this machine.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[Any, h11.Connection, float]] = []

    async def _connection(self) -> tuple[Any, h11.Connection]:
        while self.idle:
            stream, conn, since = self.idle.pop()
            # uvicorn drops idle keep-alive connections after 5 s: never reuse one it may have closed.
            if conn.our_state is h11.IDLE and time.monotonic() - since < 4:
                return stream, conn
            await stream.aclose()
        return await anyio.connect_tcp("127.0.0.1", self.port), h11.Connection(h11.CLIENT)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        stream, conn = await self._connection()

        async def next_event() -> Any:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await stream.receive(256 * 1024))
            return event

        reusable = False
        try:
            headers = [(b"host", f"127.0.0.1:{self.port}".encode())]
            headers += [(k, v) for k, v in scope["headers"] if k not in HOP and k != b"host"]
            if scope["method"] in ("POST", "PUT", "PATCH") and not any(
                k == b"content-length" for k, _ in headers
            ):
                headers.append((b"transfer-encoding", b"chunked"))
            target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
            out = conn.send(h11.Request(method=scope["method"], target=target, headers=headers))
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if message.get("body"):
                    out += conn.send(h11.Data(data=message["body"]))
                if not message.get("more_body"):
                    break
                await stream.send(out)
                out = b""
            await stream.send(out + conn.send(h11.EndOfMessage()))
            event = await next_event()
            while isinstance(event, h11.InformationalResponse):
                event = await next_event()
            out_headers = [(k, v) for k, v in event.headers if k not in HOP]
            await send({"type": "http.response.start", "status": event.status_code, "headers": out_headers})
            while isinstance(event := await next_event(), h11.Data):
                await send({"type": "http.response.body", "body": bytes(event.data), "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            conn.start_next_cycle()
            reusable = True
        finally:
            if reusable:
                self.idle.append((stream, conn, time.monotonic()))
            else:
                with anyio.CancelScope(shield=True):
                    await stream.aclose()


class HttpxProxy:
    """The same hop with an httpx2 client (what a gateway built on httpx2 pays)."""

    def __init__(self, port: int) -> None:
        self.client = httpx2.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=httpx2.Timeout(30, read=300),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=300),
        )

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        headers = [(k, v) for k, v in scope["headers"] if k not in HOP and k != b"host"]
        target = scope["raw_path"].decode() + (
            "?" + scope["query_string"].decode() if scope["query_string"] else ""
        )
        has_body = scope["method"] in ("POST", "PUT", "PATCH")
        request = self.client.build_request(
            scope["method"], target, headers=headers, content=body() if has_body else None
        )
        response = await self.client.send(request, stream=True)
        try:
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


def role_gateway(edge_url: str, mcp_port: int, cert: str, key: str, connections: int, hop: str) -> None:
    from inwall.tunnel import TunnelConnector, gateway_server_context

    proxy = LeanProxy(mcp_port) if hop == "lean" else HttpxProxy(mcp_port)
    sock = _listen()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(connections):
                await tg.start(TunnelConnector(edge_url, TOKEN, proxy, gateway_server_context(cert, key)).run)
            server = uvicorn.Server(uvicorn.Config(proxy, log_level="warning", lifespan="off"))
            tg.start_soon(server.serve, [sock])
            print(f"READY {sock.getsockname()[1]}", flush=True)

    anyio.run(main)


# --- the measuring process ------------------------------------------------------------------------


def make_pki(directory: Path) -> tuple[str, str, str]:
    """A CA (PEM) and a gateway certificate for DOMAIN signed by it (paths)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict(
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("bench CA"))
        .issuer_name(name("bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name(DOMAIN))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(DOMAIN), x509.DNSName(f"*.{DOMAIN}")]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gw.crt", directory / "gw.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM).decode(), str(cert_path), str(key_path)


class Directory:
    def __init__(self, ca_pem: str) -> None:
        from inwall.tunnel import TunnelAuth

        self.auth = TunnelAuth(tunnel_id=TUNNEL_ID, domain=DOMAIN, token_id="bench")
        self.ca_pem = ca_pem

    async def authenticate(self, token: str) -> Any:
        return self.auth if token == TOKEN else None

    async def trusted_ca_pems(self, tunnel_id: str) -> list[str]:
        return [self.ca_pem]

    async def tunnel_for_host(self, host: str) -> Any:
        return self.auth if host == DOMAIN or host.endswith("." + DOMAIN) else None


@asynccontextmanager
async def child(*args: str) -> AsyncIterator[int]:
    """Run this file in another role; yields the port it reports."""
    process = await anyio.open_process([sys.executable, __file__, *args], stderr=None)
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        assert line.startswith(b"READY "), line
        yield int(line.split()[1])
    finally:
        process.terminate()
        with anyio.move_on_after(5, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


@asynccontextmanager
async def mcp_session(url: str, http: httpx2.AsyncClient) -> AsyncIterator[Any]:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with (
        streamable_http_client(url, http_client=http, max_sse_event_size=None) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from inwall.tunnel import TunnelEdge

    workdir = tempfile.TemporaryDirectory(prefix="bench-tunnel-")
    ca_pem, cert, key = make_pki(Path(workdir.name))
    edge = TunnelEdge(Directory(ca_pem), connect_wait_s=10)
    edge_sock = _listen()
    edge_port = edge_sock.getsockname()[1]
    edge_server = uvicorn.Server(
        uvicorn.Config(
            Starlette(routes=[WebSocketRoute("/v1/tunnels/connect", edge.websocket_endpoint)]),
            log_level="warning",
            lifespan="off",
            ws=args.ws,
            ws_max_size=2 * 1024 * 1024,
        )
    )
    results: dict[str, Any] = {
        "ws": args.ws,
        "hop": args.hop,
        "calls": args.calls,
        "mb": args.mb,
        "concurrent": args.concurrent,
    }
    timeout = httpx2.Timeout(60, read=600)
    async with AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        await tg.start(edge.run)
        tg.start_soon(edge_server.serve, [edge_sock])
        mcp_port = await stack.enter_async_context(child("mcp"))
        edge_url = f"ws://127.0.0.1:{edge_port}/v1/tunnels/connect"
        proxy_port = await stack.enter_async_context(
            child("gateway", edge_url, str(mcp_port), cert, key, str(args.connections), args.hop)
        )
        with anyio.fail_after(30):
            await edge.wait_connections(TUNNEL_ID, lambda n: n >= args.connections)

        direct_http = await stack.enter_async_context(httpx2.AsyncClient(timeout=timeout))
        proxy_http = await stack.enter_async_context(httpx2.AsyncClient(timeout=timeout))
        tunnel_http = await stack.enter_async_context(
            httpx2.AsyncClient(transport=edge.transport(), timeout=timeout)
        )
        paths = {
            "direct": (f"http://127.0.0.1:{mcp_port}", direct_http),
            "proxy": (f"http://127.0.0.1:{proxy_port}", proxy_http),
            "tunnel": (f"https://crm.{DOMAIN}", tunnel_http),
        }
        sessions = {
            name: await stack.enter_async_context(mcp_session(f"{base}/mcp", http))
            for name, (base, http) in paths.items()
        }

        # 1. per-call latency of tools/call, interleaved in small batches so drift hits all paths alike
        latency: dict[str, list[float]] = {name: [] for name in paths}
        for session in sessions.values():
            for _ in range(30):  # warm-up
                await session.call_tool("add", {"a": 1, "b": 2})
        for _ in range(args.calls // 10):
            for name, session in sessions.items():
                for _ in range(10):
                    latency[name].append(await timed(partial(session.call_tool, "add", {"a": 1, "b": 2})))
        for name, values in latency.items():
            results[f"latency_{name}_median_ms"] = statistics.median(values) * 1000
            results[f"latency_{name}_p99_ms"] = _pct(values, 0.99) * 1000
        for name in ("proxy", "tunnel"):
            results[f"added_{name}_median_ms"] = (
                results[f"latency_{name}_median_ms"] - results["latency_direct_median_ms"]
            )
            results[f"added_{name}_p99_ms"] = (
                results[f"latency_{name}_p99_ms"] - results["latency_direct_p99_ms"]
            )

        # 2. throughput of one 50 MB response: an MCP tool result, and raw HTTP bytes
        size = args.mb * 1000 * 1000
        for kind in ("mcp", "raw"):
            best: dict[str, float] = {}
            for _ in range(args.repeat):
                for name, session in sessions.items():
                    base, http = paths[name]
                    if kind == "mcp":

                        async def call(session: Any = session) -> None:
                            result = await session.call_tool("export", {"size": size})
                            assert len(result.content[0].text) == size

                        elapsed = await timed(call)
                    else:

                        async def fetch(base: str = base, http: httpx2.AsyncClient = http) -> None:
                            got = 0
                            async with http.stream("GET", f"{base}/raw?n={size}") as response:
                                async for chunk in response.aiter_raw():
                                    got += len(chunk)
                            assert got == size

                        elapsed = await timed(fetch)
                    best[name] = min(best.get(name, float("inf")), elapsed)
            for name, elapsed in best.items():
                results[f"throughput_{kind}_{name}_MBps"] = size / elapsed / 1e6
            for name in ("proxy", "tunnel"):
                results[f"throughput_{kind}_{name}_ratio"] = best["direct"] / best[name]

        # 3. concurrent calls over the tunnel (one connection unless --connections says otherwise)
        for name in ("direct", "tunnel"):
            errors: list[str] = []

            async def one(i: int, session: Any = sessions[name], errors: list[str] = errors) -> None:
                try:
                    result = await session.call_tool("add", {"a": i, "b": 1})
                    if result.structured_content != {"result": i + 1}:
                        errors.append(f"wrong result for {i}")
                except Exception as exc:
                    errors.append(repr(exc))

            start = time.perf_counter()
            async with anyio.create_task_group() as burst:
                for i in range(args.concurrent):
                    burst.start_soon(one, i)
            results[f"concurrent_{name}_errors"] = len(errors)
            results[f"concurrent_{name}_wall_s"] = time.perf_counter() - start
            if errors:
                results[f"concurrent_{name}_first_error"] = errors[0]
        results["tunnel_connections"] = edge.connections(TUNNEL_ID)
    workdir.cleanup()
    return results


def report(results: dict[str, Any]) -> None:
    r = results
    print(
        f"\nbench_tunnel  (uvicorn ws={r['ws']}, gateway hop={r['hop']}, {r['calls']} calls/path, "
        f"{r['mb']} MB, {r['concurrent']} concurrent)"
    )
    print("tools/call latency, ms        median      p99")
    for name in ("direct", "proxy", "tunnel"):
        print(f"  {name:<26}{r[f'latency_{name}_median_ms']:>8.3f} {r[f'latency_{name}_p99_ms']:>8.3f}")
    print(f"  added by proxy hop alone   {r['added_proxy_median_ms']:>8.3f} {r['added_proxy_p99_ms']:>8.3f}")
    added = f"{r['added_tunnel_median_ms']:>8.3f} {r['added_tunnel_p99_ms']:>8.3f}"
    print(f"  added by tunnel (+hop)     {added}   target <= 2 ms median")
    transport = r["latency_tunnel_median_ms"] - r["latency_proxy_median_ms"]
    print(f"  tunnel transport alone     {transport:>8.3f}            (tunnel - proxy)")
    for kind, label in (("mcp", "MCP tool result"), ("raw", "raw HTTP body")):
        parts = [f"direct {r[f'throughput_{kind}_direct_MBps']:.1f} MB/s"]
        for name in ("proxy", "tunnel"):
            rate, ratio = r[f"throughput_{kind}_{name}_MBps"], r[f"throughput_{kind}_{name}_ratio"]
            parts.append(f"{name} {rate:.1f} MB/s ({ratio:.0%})")
        print(f"{r['mb']} MB {label}: " + ", ".join(parts))
    print(
        f"{r['concurrent']} concurrent calls: direct {r['concurrent_direct_errors']} errors "
        f"in {r['concurrent_direct_wall_s']:.2f} s; tunnel {r['concurrent_tunnel_errors']} errors "
        f"in {r['concurrent_tunnel_wall_s']:.2f} s over {r['tunnel_connections']} connection(s)"
    )
    ok = (
        r["added_tunnel_median_ms"] <= 2.0
        and r["throughput_mcp_tunnel_ratio"] >= 0.5
        and r["concurrent_tunnel_errors"] == 0
    )
    print("targets (MCP path):", "met" if ok else "NOT met")
    print("JSON " + json.dumps(r, sort_keys=True))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "mcp":
        role_mcp()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "gateway":
        role_gateway(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="sequential tools/call per path")
    parser.add_argument("--mb", type=int, default=50, help="size of the big response, MB")
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs per path (best counts)")
    parser.add_argument("--concurrent", type=int, default=200)
    parser.add_argument("--connections", type=int, default=1, help="gateway connections")
    parser.add_argument(
        "--ws", default="websockets-sansio", choices=["websockets-sansio", "wsproto", "websockets"]
    )
    parser.add_argument("--hop", default="lean", choices=["lean", "httpx2"], help="the gateway's proxy hop")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    report(anyio.run(run, args))


if __name__ == "__main__":
    main()
