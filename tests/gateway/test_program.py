"""The supervisor: N connections, full-jitter backoff, auth-failure stop, drain on stop."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from inwall.errors import ConfigError
from inwall.gateway.backoff import FullJitterBackoff
from inwall.gateway.certs import create_certificates
from inwall.gateway.program import GatewayProgram, tunnel_url
from inwall.tunnel import TunnelAuthRejected, TunnelClosed
from tests.gateway.conftest import gateway_config, http_route

pytestmark = pytest.mark.anyio


def test_full_jitter_backoff_grows_to_the_cap_and_resets() -> None:
    draws = iter([1.0, 1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    b = FullJitterBackoff(base_s=0.5, cap_s=30, rng=lambda: next(draws))
    assert [b.next_delay() for _ in range(9)] == [0.5, 1.0, 1.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    b.reset()
    assert b.next_delay() == 0.0 and b.attempt == 1
    with pytest.raises(ValueError, match="backoff"):
        FullJitterBackoff(base_s=0)


def test_tunnel_url() -> None:
    assert tunnel_url("https://inwall.example.com") == "wss://inwall.example.com/v1/tunnels/connect"
    assert (
        tunnel_url("https://inwall.example.com/prefix/")
        == "wss://inwall.example.com/prefix/v1/tunnels/connect"
    )
    assert tunnel_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/v1/tunnels/connect"
    assert tunnel_url("ws://localhost:1/v1/tunnels/connect") == "ws://localhost:1/v1/tunnels/connect"
    with pytest.raises(ConfigError, match="clear"):
        tunnel_url("http://inwall.example.com")  # the token would travel unencrypted
    assert tunnel_url("http://inwall.internal", allow_insecure=True).startswith("ws://inwall.internal/")
    with pytest.raises(ConfigError):
        tunnel_url("ftp://x")


class Script:
    """Stands in for the far side: what each successive connection attempt does."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps
        self.made: list[FakeConnector] = []
        self.kwargs: list[dict[str, Any]] = []

    def __call__(
        self, url: str, token: str, app: Any, server_ssl: ssl.SSLContext, **kwargs: Any
    ) -> FakeConnector:
        self.kwargs.append({"url": url, "token": token, **kwargs})
        step = self.steps.pop(0) if self.steps else "up"
        connector = FakeConnector(step)
        self.made.append(connector)
        return connector


class FakeConnector:
    def __init__(self, step: str) -> None:
        self.step = step
        self.drained = anyio.Event()
        self.dropped = False
        self.drain_timeouts: list[float] = []

    async def run(self, *, task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
        if self.step == "fail":
            raise TunnelClosed("link refused")
        if self.step == "auth":
            raise TunnelAuthRejected("the edge answered 401", status=401)
        task_status.started()
        if self.step == "blip":
            raise TunnelClosed("link died")
        await self.drained.wait()
        if self.dropped:
            raise TunnelClosed("the edge closed the link (the token's grace period ended)")

    def drop(self) -> None:
        self.dropped = True
        self.drained.set()

    async def drain(self, timeout_s: float) -> None:
        self.drain_timeouts.append(timeout_s)
        self.drained.set()


def make_program(tmp_path: Path, script: Script, **kwargs: Any) -> GatewayProgram:
    certs = create_certificates("tnl.example", tmp_path / "certs")
    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 1)}, connections=2, drain_timeout_s=5)
    config = type(config)(
        **{**config.__dict__, "tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    )
    return GatewayProgram(
        config,
        base_url="http://127.0.0.1:9",
        token="tok-secret",
        connector_factory=script,
        environ={},
        rng=lambda: 0.0,
        **kwargs,
    )


async def test_keeps_n_connections_and_reconnects(tmp_path: Path) -> None:
    script = Script(["fail", "blip", "fail"])
    program = make_program(tmp_path, script)
    assert "tok-secret" not in repr(program)
    async with anyio.create_task_group() as tg:
        await tg.start(program.run)
        with anyio.fail_after(5):
            await program.wait_connected(2)
        assert program.connected == 2 and program.connects >= 3  # the blip came up once, then reconnected
        program.stop()
    assert len(script.made) >= 5
    assert all(
        kw["url"] == "ws://127.0.0.1:9/v1/tunnels/connect" and kw["proxy"] is None for kw in script.kwargs
    )
    assert all(kw["ping_interval_s"] == 5.0 and kw["dead_after_s"] == 15.0 for kw in script.kwargs)
    live = [c for c in script.made if c.step == "up"]
    assert len(live) == 2 and all(c.drain_timeouts == [5] for c in live)  # stop drained both


async def test_auth_failure_stops_everything(tmp_path: Path) -> None:
    script = Script(["auth", "auth"])
    program = make_program(tmp_path, script)
    with anyio.fail_after(5), pytest.raises(TunnelAuthRejected):
        await program.run()
    assert len(script.made) <= 3  # no retry loop: at most the two first attempts and a racing reconnect
    assert isinstance(program.auth_failure, TunnelAuthRejected)


async def test_a_refused_reconnect_leaves_live_connections_serving(tmp_path: Path) -> None:
    # Token rotation: one connection drops and its reconnect gets a 401, while the other still
    # serves through the grace period. Only the refused supervisor stops; the gateway stops
    # once no connection is left.
    script = Script(["up", "blip", "auth", "auth"])
    program = make_program(tmp_path, script)
    outcome: list[BaseException] = []

    async def run() -> None:
        try:
            await program.run()
        except TunnelAuthRejected as exc:
            outcome.append(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await program.wait_connected(1)
            await anyio.wait_all_tasks_blocked()
            assert [c.step for c in script.made] == ["up", "blip", "auth"]
            survivor = script.made[0]
            assert program.connected == 1 and not outcome and program.auth_failure is None
            assert survivor.drain_timeouts == []  # not drained: it still carries traffic
            survivor.drop()  # the grace period ends; its reconnect is refused too
    assert [c.step for c in script.made] == ["up", "blip", "auth", "auth"]
    assert len(outcome) == 1 and program.auth_failure is outcome[0]
    assert program.connected == 0


async def test_proxy_from_environment(tmp_path: Path) -> None:
    script = Script([])
    program = make_program(tmp_path, script)
    assert program._proxy is None
    certs = create_certificates("tnl.example", tmp_path / "certs")
    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 1)})
    config = type(config)(
        **{**config.__dict__, "tls_cert_file": certs.server_cert, "tls_key_file": certs.server_key}
    )
    proxied = GatewayProgram(
        config, base_url="https://inwall.example.com", token="t", environ={"HTTPS_PROXY": "http://proxy:3128"}
    )
    assert proxied._proxy == "http://proxy:3128"
    bypassed = GatewayProgram(
        config,
        base_url="https://inwall.example.com",
        token="t",
        environ={"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".example.com"},
    )
    assert bypassed._proxy is None


def test_missing_token_is_a_config_error(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, routes={"crm": http_route("crm", 1)})
    with pytest.raises(ConfigError, match="INWALL_TUNNEL_TOKEN"):
        GatewayProgram(config, base_url="http://127.0.0.1:1", token="")
