"""Results over the token threshold reach the model as a reference; the full text lands in the workspace."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker

from inwall.agent.offload import estimate_tokens
from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, new_session, run_turn
from tests.mcp.servers import CrmState, big_text, make_app

pytestmark = pytest.mark.anyio

SIZE = 600 * 1024


def crm_agent(base: str, **metadata: str) -> dict[str, Any]:
    return {
        "name": "offload",
        "model": "inwall-scripted",
        "metadata": metadata,
        "mcp_servers": [{"type": "url", "name": "crm", "url": f"{base}/mcp"}],
        "tools": [
            {"type": "agent_toolset_20260401"},
            {
                "type": "mcp_toolset",
                "mcp_server_name": "crm",
                "default_config": {"permission_policy": {"type": "always_allow"}},
            },
        ],
    }


@asynccontextmanager
async def session_with_worker(
    tmp_path: Path, agent: Callable[[str], dict[str, Any]]
) -> AsyncIterator[tuple[AsyncAnthropic, str, Path]]:
    """A server, an MCP server on loopback, a session of ``agent(mcp base url)`` and the SDK's worker."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with (
        serve_asgi(make_app(CrmState())) as base,
        running_server(fast_settings(tmp_path / "data")) as server,
        server.client() as client,
        server.client() as worker_client,
    ):
        session_id = await new_session(client, agent(base))
        env_id = (await client.beta.sessions.retrieve(session_id)).environment_id
        minted = await client.post(f"/v1/inwall/environments/{env_id}/keys", cast_to=object, body={})
        worker = EnvironmentWorker(
            worker_client,
            environment_id=env_id,
            environment_key=minted["key"],  # type: ignore[index]
            workdir=workdir,
            max_idle=30,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            yield client, session_id, workdir
            tg.cancel_scope.cancel()


async def test_a_600kb_mcp_result_is_offloaded_and_sliced(tmp_path: Path) -> None:
    async with session_with_worker(tmp_path, crm_agent) as (client, session_id, workdir):
        events, answer = await run_turn(client, session_id, [call("mcp__crm__big", {"size": SIZE})])
        [write] = [e for e in events if e.type == "agent.tool_use" and e.name == "write"]
        offload = write.model_extra["inwall_offload"]
        path = offload["file_path"]
        _, sliced = await run_turn(
            client,
            session_id,
            [
                call("read", {"file_path": path, "view_range": [100, 101]}),
                call("grep", {"pattern": "row 011000", "path": path}),
            ],
        )

    full = big_text(SIZE)
    assert offload["size_bytes"] == SIZE
    assert offload["estimated_tokens"] == estimate_tokens(full) > 100_000
    # The model saw a short note (path, size, head and tail), not 600 KB.
    [line] = answer.splitlines()[:1]
    noted = int(line.split("[", 1)[1].split(" chars]")[0])
    assert noted < 5000
    assert path in answer and f"{SIZE:,} bytes" in answer and "row 000001" in answer
    # The full text is in the workspace, written by the worker.
    assert (workdir / path).read_text() == full
    # The event stream keeps the full result.
    [result] = [e for e in events if e.type == "agent.mcp_tool_result"]
    assert result.content[0].text == full
    # And the agent read slices of it with its ordinary tools.
    lines = sliced.splitlines()
    assert lines[0] == "read [97 chars]: row 000100: abcdefghijklmnopqrstuvwxyz0123456789"
    assert lines[1] == "row 000101: abcdefghijklmnopqrstuvwxyz0123456789"
    assert lines[2].startswith("grep [") and "row 011000:" in lines[2]
    assert json.dumps(answer)  # plain text


async def test_thresholds_per_agent_and_per_mcp_server(tmp_path: Path) -> None:
    """Agent metadata sets the threshold; a per-server key beats it for that server's tools."""

    def agent(base: str) -> dict[str, Any]:
        return crm_agent(
            base,
            inwall_offload_threshold_tokens="1000",  # about 4 KB: the built-in tools' results offload
            **{"inwall_offload_threshold_tokens:crm": "1000000"},  # the CRM's 600 KB does not
        )

    async with session_with_worker(tmp_path, agent) as (client, session_id, workdir):
        events, answer = await run_turn(
            client,
            session_id,
            [call("bash", {"command": "seq -f 'line %05g' 1 1000"}), call("mcp__crm__big", {"size": SIZE})],
        )
    writes = [e for e in events if e.type == "agent.tool_use" and e.name == "write"]
    [bash_use] = [e for e in events if e.type == "agent.tool_use" and e.name == "bash"]
    assert [w.model_extra["inwall_offload"]["tool_use_id"] for w in writes] == [bash_use.id]
    bash_line, mcp_line = [
        line for line in answer.splitlines() if line.startswith(("bash [", "mcp__crm__big ["))
    ]
    assert "[inwall] This tool result is too large" in bash_line and "(the limit is 1,000)" in answer
    assert mcp_line.startswith(f"mcp__crm__big [{SIZE} chars]: row 000001")  # whole, not a note
    saved = workdir / writes[0].model_extra["inwall_offload"]["file_path"]
    assert saved.read_text().splitlines()[-1] == "line 01000"
