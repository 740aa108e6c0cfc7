"""The worker's fetch of identity tokens against the real control plane (no worker, no sandbox)."""

from __future__ import annotations

from pathlib import Path

import pytest
from anthropic import AsyncAnthropic

from inwall.errors import Unavailable
from inwall.governance import IdentityKeys, IdentityVerifier, input_digest
from inwall.worker.identity import ControlPlaneIdentity
from inwall.worker.perimeter import worker_audience
from tests.helpers import fast_settings, mint_env_key, running_server, user_message, wait_for_events

pytestmark = pytest.mark.anyio


async def test_the_pending_calls_token_is_fetched_and_verifies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    command = {"command": "echo from the model"}
    async with running_server(fast_settings(data)) as server, server.client() as admin:
        env = await admin.beta.environments.create(name="ids", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(
            name="scripted", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
        )
        key = await mint_env_key(admin, env.id)
        session = await admin.beta.sessions.create(agent=agent.id, environment_id=env.id)
        async with AsyncAnthropic(base_url=server.base_url, auth_token=key) as as_worker:
            source = ControlPlaneIdentity(as_worker, session.id)
            assert await source.token() is None  # nothing pending yet: 404
            await admin.beta.sessions.events.send(
                session.id, events=[user_message('call bash {"command": "echo from the model"}')]
            )
            events = await wait_for_events(
                admin, session.id, lambda evs: any(e.type == "agent.tool_use" for e in evs)
            )
            token = await source.token()
        async with AsyncAnthropic(base_url=server.base_url, auth_token="sk-wrong") as stranger:
            with pytest.raises(Unavailable, match="HTTP 401"):
                await ControlPlaneIdentity(stranger, session.id).token()
    assert token is not None
    [use] = [e for e in events if e.type == "agent.tool_use"]
    public = IdentityKeys.load_public(data / "identity_ed25519.pub.pem")  # pinned from the data dir
    verified = IdentityVerifier(public, audience=worker_audience(env.id)).verify(
        token, tool="bash", input_sha256=input_digest(command)
    )
    assert verified.session_id == session.id and verified.tool_use_id == use.id
    assert verified.identity.kind == "admin"  # the admin key created this session


async def test_an_unreachable_control_plane_is_unavailable_not_anonymous(tmp_path: Path) -> None:
    async with AsyncAnthropic(base_url="http://127.0.0.1:9", auth_token="k", max_retries=0) as client:
        with pytest.raises(Unavailable, match="APIConnectionError"):
            await ControlPlaneIdentity(client, "sesn_x", timeout_s=2).token()
