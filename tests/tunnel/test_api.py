"""The public surface: exported names, argument validation, edge shutdown."""

from __future__ import annotations

import importlib

import anyio
import anyio.abc
import pytest

from inwall.errors import ConfigError
from inwall.tunnel import TunnelClosed, TunnelConnector, TunnelEdge
from tests.tunnel.helpers import PKI, TOKEN, TUNNEL_ID, FakeDirectory, ProbeApp, edge_app, serve_asgi

PUBLIC_MODULES = [
    "inwall.tunnel",
    "inwall.tunnel.connector",
    "inwall.tunnel.edge",
    "inwall.tunnel.errors",
    "inwall.tunnel.link",
    "inwall.tunnel.links",
    "inwall.tunnel.liveness",
    "inwall.tunnel.mux",
    "inwall.tunnel.tls",
    "inwall.tunnel.wsclient",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_exactly_the_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    assert all(hasattr(module, n) for n in exported), "every name in __all__ exists"
    assert len(exported) == len(module.__all__), "no duplicates"
    assert sorted(module.__all__) == sorted(exported)


def test_protocol_cores_import_no_io() -> None:
    import ast
    from pathlib import Path

    import inwall.tunnel

    root = Path(inwall.tunnel.__file__).parent
    for core in ("link.py", "wsclient.py", "tls.py", "mux.py", "liveness.py"):
        tree = ast.parse((root / core).read_text())
        imported = {
            (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        for banned in ("asyncio", "anyio", "socket", "httpx", "httpx2", "websockets.asyncio", "trio"):
            assert not any(m == banned or m.startswith(banned + ".") for m in imported), (core, banned)


def test_arguments_are_validated(pki: PKI, directory: FakeDirectory) -> None:
    with pytest.raises(ValueError, match="dead_after_s"):
        TunnelEdge(directory, ping_interval_s=5, dead_after_s=5)
    with pytest.raises(ValueError, match="max_message_bytes"):
        TunnelEdge(directory, max_message_bytes=10)
    with pytest.raises(ValueError, match="dead_after_s"):
        TunnelConnector(
            "ws://127.0.0.1:1/", TOKEN, ProbeApp(), pki.server_ssl(), ping_interval_s=2, dead_after_s=1
        )


@pytest.mark.anyio
async def test_bad_urls_are_config_errors(pki: PKI) -> None:
    for url in ("http://edge.test/v1/tunnels/connect", "ws:///nohost"):
        with pytest.raises(ConfigError):
            await TunnelConnector(url, TOKEN, ProbeApp(), pki.server_ssl()).run()
    with pytest.raises(ConfigError, match="http://"):
        await TunnelConnector(
            "ws://127.0.0.1:1/", TOKEN, ProbeApp(), pki.server_ssl(), proxy="socks5://127.0.0.1:1080"
        ).run()


@pytest.mark.anyio
async def test_stopping_the_edge_closes_gateway_connections(pki: PKI, directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory)
    async with serve_asgi(edge_app(edge)) as port:
        connector = TunnelConnector(
            f"ws://127.0.0.1:{port}/v1/tunnels/connect", TOKEN, ProbeApp(), pki.server_ssl()
        )
        outcome: list[BaseException] = []
        async with anyio.create_task_group() as outer:
            edge_scope = anyio.CancelScope()

            async def run_edge(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                with edge_scope:
                    await edge.run(task_status=task_status)

            await outer.start(run_edge)

            async def run_connector(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                try:
                    await connector.run(task_status=task_status)
                except TunnelClosed as exc:
                    outcome.append(exc)

            await outer.start(run_connector)
            assert edge.connections(TUNNEL_ID) == 1
            edge_scope.cancel()
        assert outcome and outcome[0].code == 1001  # type: ignore[attr-defined]
        assert edge.connections(TUNNEL_ID) == 0


@pytest.mark.anyio
async def test_edge_runs_once(directory: FakeDirectory) -> None:
    edge = TunnelEdge(directory)
    async with anyio.create_task_group() as tg:
        await tg.start(edge.run)
        with pytest.raises(Exception, match="already running"):
            await edge.run()
        tg.cancel_scope.cancel()
