"""Results over the token threshold reach the model as a reference; the full text lands in the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from anthropic.lib.environments import EnvironmentWorker

from inwall.agent.offload import estimate_tokens
from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, new_session, run_turn
from tests.mcp.servers import CrmState, big_text, make_app

pytestmark = pytest.mark.anyio

SIZE = 600 * 1024


async def test_a_600kb_mcp_result_is_offloaded_and_sliced(tmp_path: Path) -> None:
    state = CrmState()
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with (
        serve_asgi(make_app(state)) as base,
        running_server(fast_settings(tmp_path / "data")) as server,
    ):
        async with server.client() as client, server.client() as worker_client:
            agent = {
                "name": "offload",
                "model": "inwall-scripted",
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
            session_id = await new_session(client, agent)
            env_id = (await client.beta.sessions.retrieve(session_id)).environment_id
            minted = await client.post(f"/v1/inwall/environments/{env_id}/keys", cast_to=object, body={})
            worker = EnvironmentWorker(
                worker_client,
                environment_id=env_id,
                environment_key=minted["key"],
                workdir=workdir,
                max_idle=30,  # type: ignore[index]
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                events, answer = await run_turn(client, session_id, [call("mcp__crm__big", {"size": SIZE})])
                [write] = [e for e in events if e.type == "agent.tool_use" and e.name == "write"]
                offload = write.model_extra["inwall_offload"]  # type: ignore[index]
                path = offload["file_path"]
                _, sliced = await run_turn(
                    client,
                    session_id,
                    [
                        call("read", {"file_path": path, "view_range": [100, 101]}),
                        call("grep", {"pattern": "row 011000", "path": path}),
                    ],
                )
                tg.cancel_scope.cancel()

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
