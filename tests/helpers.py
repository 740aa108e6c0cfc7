"""Shared test helpers: a real control plane on loopback, and SDK clients pointed at it."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from anthropic import AsyncAnthropic
from anthropic.types.beta.sessions import BetaManagedAgentsUserMessageEventParams
from anyio.from_thread import start_blocking_portal

from inwall.agent.runner import RunnerSettings
from inwall.server.serve import Bound, serve
from inwall.server.settings import ServerSettings

__all__ = [
    "Server",
    "answer_text",
    "decode_secret",
    "events_of",
    "fast_settings",
    "mint_env_key",
    "running_server",
    "running_server_in_thread",
    "user_message",
    "wait_for_event",
    "wait_for_events",
    "wait_until",
]


def fast_settings(data_dir: Path, **overrides: Any) -> ServerSettings:
    """Settings with millisecond-scale timers, so tests never wait on production intervals."""
    runner = RunnerSettings(model_retry_base_s=0.01, model_retry_cap_s=0.05, wait_slice_s=1.0)
    base = ServerSettings(data_dir=data_dir, port=0, lease_ttl_s=30, reap_interval_s=0.1, runner=runner)
    return replace(base, **overrides)


@dataclass
class Server:
    bound: Bound
    admin_key: str

    @property
    def base_url(self) -> str:
        return self.bound.base_url

    def client(self, key: str | None = None, **kw: Any) -> AsyncAnthropic:
        return AsyncAnthropic(
            base_url=self.base_url, api_key=key or self.admin_key, _strict_response_validation=True, **kw
        )


@contextlib.asynccontextmanager
async def running_server(settings: ServerSettings) -> AsyncIterator[Server]:
    async with anyio.create_task_group() as tg:
        bound: Bound = await tg.start(lambda task_status: serve(settings, task_status=task_status))
        key = (settings.data_dir / "admin_key").read_text().strip()
        try:
            yield Server(bound, key)
        finally:
            tg.cancel_scope.cancel()


@contextlib.contextmanager
def running_server_in_thread(settings: ServerSettings) -> Iterator[Server]:
    """``running_server`` on its own event-loop thread, for sync (e.g. module-scoped) fixtures.

    The server is as real as ever (uvicorn on loopback); clients in the test's own loop reach it
    over its socket. A module-scoped async fixture would need a module-scoped ``anyio_backend``.
    """
    with (
        start_blocking_portal(backend="asyncio") as portal,
        portal.wrap_async_context_manager(running_server(settings)) as srv,
    ):
        yield srv


async def wait_for_event(
    client: AsyncAnthropic, session_id: str, predicate: Any, *, timeout: float = 10.0
) -> list[Any]:
    """Read the event list until ``predicate(event)`` holds for some event; return all events read."""
    with anyio.fail_after(timeout):
        while True:
            events = [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]
            if any(predicate(e) for e in events):
                return events
            await anyio.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``inwall server`` as a real child process, so a test can SIGKILL it mid-turn and start it again."""

    def __init__(
        self, data_dir: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> None:
        import os

        self.data_dir = data_dir
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.proc: Any = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_key(self) -> str:
        return (self.data_dir / "admin_key").read_text().strip()

    async def start(self, timeout: float = 20.0) -> None:
        import subprocess
        import sys

        import httpx2

        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inwall.cli.main",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.args,
            ],
            env=self.env,
            stdout=log,
            stderr=log,
        )
        log.close()
        async with httpx2.AsyncClient() as http:
            with anyio.fail_after(timeout):
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"server exited early: {self.log_path.read_text()[-2000:]}")
                    try:
                        if (await http.get(f"{self.base_url}/healthz")).status_code == 200:
                            return
                    except httpx2.TransportError:
                        pass
                    await anyio.sleep(0.05)

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
        return int(self.proc.wait(timeout))


async def events_of(client: AsyncAnthropic, session_id: str) -> list[Any]:
    """The whole event log of a session, oldest first, walked with the SDK's auto-pager."""
    return [e async for e in client.beta.sessions.events.list(session_id, limit=1000)]


async def wait_for_events(
    client: AsyncAnthropic,
    session_id: str,
    done: Callable[[list[Any]], bool],
    *,
    within: float = 10.0,
) -> list[Any]:
    """Re-read the event list until ``done(events)`` holds; return that list (bounded by ``within`` s)."""
    with anyio.fail_after(within):
        while True:
            events = await events_of(client, session_id)
            if done(events):
                return events
            await anyio.sleep(0.05)


async def wait_until(check: Callable[[], Any], *, within: float = 10.0, interval: float = 0.05) -> Any:
    """Await ``check()`` until it returns something truthy; return it (bounded by ``within`` s)."""
    with anyio.fail_after(within):
        while True:
            value = await check()
            if value:
                return value
            await anyio.sleep(interval)


async def mint_env_key(client: AsyncAnthropic, environment_id: str) -> str:
    """``POST /v1/inwall/environments/{id}/keys`` through the SDK client; the plaintext key, shown once."""
    minted = await client.post(f"/v1/inwall/environments/{environment_id}/keys", cast_to=object, body={})
    assert isinstance(minted, dict)
    assert minted["type"] == "environment_key"
    key = minted["key"]
    assert isinstance(key, str)
    return key


def user_message(text: str) -> BetaManagedAgentsUserMessageEventParams:
    """A ``user.message`` event param holding one text block."""
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def decode_secret(secret: str) -> dict[str, Any]:
    """A polled work item's ``secret`` decoded exactly as the SDK worker does (URL-safe base64 JSON)."""
    payload = json.loads(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4)))
    assert isinstance(payload, dict)
    return payload


def answer_text(events: Sequence[Any]) -> str:
    """The text of the last ``agent.message``: the scripted model's answer for the turn."""
    messages = [e for e in events if e.type == "agent.message"]
    assert messages, f"no agent.message in {[e.type for e in events]}"
    return "\n".join(block.text for block in messages[-1].content if block.type == "text")


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve an ASGI app (with its lifespan) under uvicorn on a free loopback port; yields its base URL."""
    import socket

    import uvicorn

    class _Quiet(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            up.set()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY on accept
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    up = anyio.Event()
    stopped = anyio.Event()
    server = _Quiet(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1))

    async def run() -> None:
        with anyio.CancelScope(shield=True):
            try:
                await server.serve(sockets=[sock])
            finally:
                stopped.set()
                up.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await up.wait()
        try:
            yield f"http://{host}:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await stopped.wait()
            sock.close()
