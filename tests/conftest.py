"""Suite-wide fixtures: the anyio backend, and a real MCP server (`crm`) on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.helpers import serve_asgi
from tests.mcp.servers import CrmState, make_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def crm() -> AsyncIterator[tuple[str, CrmState]]:
    """A real MCP server (the SDK's low-level Server) on 127.0.0.1; yields (its /mcp URL, its state)."""
    state = CrmState()
    async with serve_asgi(make_app(state)) as url:
        yield f"{url}/mcp", state
