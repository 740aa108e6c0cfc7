"""MCP tools in sessions, over Streamable HTTP with the official mcp SDK on both ends."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from inwall.agent.runner import RunnerSettings
from tests.helpers import fast_settings, running_server, serve_asgi
from tests.mcp.conftest import call, mcp_agent, new_session, run_turn
from tests.mcp.servers import CrmState, ExpireSessionOnce, RequireBearer, make_app

pytestmark = pytest.mark.anyio


async def test_tools_are_listed_across_pages_and_called(tmp_path: Path, crm: tuple[str, CrmState]) -> None:
    url, state = crm
    async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
        session_id = await new_session(client, mcp_agent(url))
        events, answer = await run_turn(
            client, session_id, [call("mcp__crm__lookup", {"id": 7}), call("mcp__crm__t4")]
        )
    uses = [e for e in events if e.type == "agent.mcp_tool_use"]
    results = [e for e in events if e.type == "agent.mcp_tool_result"]
    assert [(u.mcp_server_name, u.name) for u in uses] == [("crm", "lookup"), ("crm", "t4")]
    assert [r.mcp_tool_use_id for r in results] == [u.id for u in uses]
    assert answer.splitlines()[0].startswith("mcp__crm__lookup [") and '"ACME Corp"' in answer
    assert answer.splitlines()[1] == "mcp__crm__t4 [5 chars]: t4 ok"
    # t4 sits on the second page of tools/list: it is only callable because every page was read.
    assert ("t4", {}) in state.calls


async def test_list_changed_is_picked_up_at_the_next_turn(tmp_path: Path, crm: tuple[str, CrmState]) -> None:
    url, state = crm
    async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
        session_id = await new_session(client, mcp_agent(url))
        _, answer = await run_turn(client, session_id, [call("mcp__crm__fresh")])
        assert "not available" in answer  # no such tool yet
        _, answer = await run_turn(client, session_id, [call("mcp__crm__grow")])
        assert "grew a new tool" in answer
        with anyio.fail_after(5):  # the notification travels on the server's GET stream
            while "fresh" not in state.tools:
                await anyio.sleep(0.02)
        _, answer = await run_turn(client, session_id, [call("mcp__crm__fresh")])
    assert answer == "mcp__crm__fresh [8 chars]: fresh ok"


async def test_slow_call_times_out_and_is_cancelled_upstream(
    tmp_path: Path, crm: tuple[str, CrmState]
) -> None:
    url, state = crm
    runner = RunnerSettings(
        model_retry_base_s=0.01, model_retry_cap_s=0.05, wait_slice_s=1.0, mcp_call_timeout_s=0.5
    )
    async with running_server(fast_settings(tmp_path, runner=runner)) as server, server.client() as client:
        session_id = await new_session(client, mcp_agent(url))
        events, answer = await run_turn(client, session_id, [call("mcp__crm__slow", {"seconds": 30})])
        with anyio.fail_after(5):
            await state.cancelled.wait()  # notifications/cancelled reached the server's handler
    [result] = [e for e in events if e.type == "agent.mcp_tool_result"]
    assert result.is_error
    assert "timed out after 0.5s" in answer


async def test_unreachable_server_is_reported_as_a_session_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"  # bound, never listening: refuses
        async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
            session_id = await new_session(client, mcp_agent(dead))
            events, answer = await run_turn(client, session_id, [call("mcp__crm__lookup", {"id": 1})])
    errors = [e for e in events if e.type == "session.error"]
    assert errors and errors[0].error.type == "mcp_connection_failed_error"
    assert errors[0].error.mcp_server_name == "crm"
    assert "not available" in answer


async def test_bearer_credentials_from_the_server_config(tmp_path: Path) -> None:
    state = CrmState()
    guarded = RequireBearer(make_app(state), token="s3cret-mcp-token")
    async with serve_asgi(guarded) as base:
        url = f"{base}/mcp"
        async with running_server(fast_settings(tmp_path / "a")) as server, server.client() as client:
            session_id = await new_session(client, mcp_agent(url))
            events, _ = await run_turn(client, session_id, [call("mcp__crm__lookup", {"id": 1})])
            errors = [e for e in events if e.type == "session.error"]
            assert errors and errors[0].error.type == "mcp_authentication_failed_error"
            assert "s3cret" not in str([e.model_dump() for e in events])
        creds = tmp_path / "mcp-credentials.toml"
        creds.write_text(f'[[server]]\nurl_prefix = "{base}/"\nbearer_token_env = "CRM_TOKEN"\n')
        import os

        os.environ["CRM_TOKEN"] = "s3cret-mcp-token"
        try:
            settings = fast_settings(tmp_path / "b", mcp_credentials_file=creds)
            async with running_server(settings) as server, server.client() as client:
                session_id = await new_session(client, mcp_agent(url))
                events, answer = await run_turn(client, session_id, [call("mcp__crm__lookup", {"id": 1})])
        finally:
            del os.environ["CRM_TOKEN"]
    assert "ACME Corp" in answer
    assert "s3cret" not in str([e.model_dump() for e in events])


async def test_session_is_reused_and_reinitialised_after_a_404(tmp_path: Path) -> None:
    state = CrmState()
    app = ExpireSessionOnce(make_app(state))
    async with serve_asgi(app) as base:
        async with running_server(fast_settings(tmp_path)) as server, server.client() as client:
            session_id = await new_session(client, mcp_agent(f"{base}/mcp"))
            await run_turn(client, session_id, [call("mcp__crm__t0"), call("mcp__crm__t1")])
            lists_before = state.list_requests
            app.armed = True
            _, answer = await run_turn(client, session_id, [call("mcp__crm__t2")])
    assert app.expired == 1
    assert answer == "mcp__crm__t2 [5 chars]: t2 ok"
    # Two calls in the first turn shared one MCP session; the 404 cost one re-initialisation, not a failure.
    assert state.list_requests - lists_before <= 3
