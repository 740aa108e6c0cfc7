"""Shared test helpers: a real control plane on loopback, and SDK clients pointed at it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
from anthropic import AsyncAnthropic

from inwall.agent.runner import RunnerSettings
from inwall.server.serve import Bound, serve
from inwall.server.settings import ServerSettings

__all__ = ["Server", "fast_settings", "running_server", "wait_for_event"]


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
