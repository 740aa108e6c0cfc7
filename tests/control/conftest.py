from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from anthropic import AsyncAnthropic

from tests.helpers import Server, fast_settings, running_server, running_server_in_thread


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """A fresh server for one test: for tests that need an empty database or their own settings."""
    async with running_server(fast_settings(tmp_path / "data")) as srv:
        yield srv


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for a whole test module, on its own event-loop thread.

    Starting and stopping a server costs about half a second; most conformance tests
    isolate themselves by creating their own environment, agent and session, so they
    share one. Tests that need an empty database use ``server``/``fresh_client``.
    """
    with running_server_in_thread(fast_settings(tmp_path_factory.mktemp("shared") / "data")) as srv:
        yield srv


@pytest.fixture
async def client(shared_server: Server) -> AsyncIterator[AsyncAnthropic]:
    """An admin-key SDK client on the module's shared server, strict response validation, closed after."""
    async with shared_server.client() as c:
        yield c


@pytest.fixture
async def fresh_client(server: Server) -> AsyncIterator[AsyncAnthropic]:
    """An admin-key SDK client on a fresh, empty server of its own."""
    async with server.client() as c:
        yield c
