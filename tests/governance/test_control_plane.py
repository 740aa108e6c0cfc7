"""Governance through the control plane: users, roles, Cedar policies, hot reload, OIDC end users, audit."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anthropic
import anyio
import jwt
import pytest
from anthropic import AsyncAnthropic, AuthenticationError, BadRequestError

from tests.governance.conftest import Provider
from tests.helpers import Server, fast_settings, running_server
from tests.mcp.conftest import call, mcp_agent, run_turn
from tests.mcp.servers import CrmState

pytestmark = pytest.mark.anyio

POLICY = """
@id("analysts-read-crm")
permit (principal in Inwall::Role::"analyst", action == Inwall::Action::"call_tool", resource)
when { resource.mcp_server == "crm" && resource != Inwall::Tool::"mcp__crm__grow" };

@id("engineers-anything")
permit (principal in Inwall::Role::"engineer", action == Inwall::Action::"call_tool", resource);

@id("never-customer-13")
forbid (principal, action == Inwall::Action::"call_tool", resource == Inwall::Tool::"mcp__crm__lookup")
when { context.input has id && context.input.id == 13 };
"""


async def _user(admin: AsyncAnthropic, name: str, roles: list[str]) -> str:
    user: Any = await admin.post("/v1/inwall/users", cast_to=object, body={"name": name, "roles": roles})
    key: Any = await admin.post(f"/v1/inwall/users/{user['id']}/keys", cast_to=object, body={})
    assert key["type"] == "api_key" and key["user_id"] == user["id"]
    return str(key["key"])


async def _setup(server: Server, url: str) -> tuple[str, str, str]:
    async with server.client() as admin:
        env = await admin.beta.environments.create(name="gov", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(**mcp_agent(url))
        analyst = await _user(admin, "ana", ["analyst"])
        engineer = await _user(admin, "eng", ["engineer"])
    return env.id, agent.id, analyst + "|" + engineer


async def test_two_roles_same_agent_different_tools_and_outcomes(
    tmp_path: Path, crm: tuple[str, CrmState]
) -> None:
    url, state = crm
    policy = tmp_path / "policy.cedar"
    policy.write_text(POLICY)
    async with running_server(fast_settings(tmp_path / "data", policy_file=policy)) as server:
        env_id, agent_id, keys = await _setup(server, url)
        analyst_key, engineer_key = keys.split("|")
        outcomes = {}
        for who, key in (("analyst", analyst_key), ("engineer", engineer_key)):
            async with server.client(key) as client:
                session = await client.beta.sessions.create(agent=agent_id, environment_id=env_id)
                _, answer = await run_turn(
                    client,
                    session.id,
                    [
                        call("mcp__crm__lookup", {"id": 1}),
                        call("mcp__crm__grow"),
                        call("mcp__crm__lookup", {"id": 13}),
                    ],
                )
                outcomes[who] = answer.splitlines()
        async with server.client() as admin:
            audit: Any = await admin.get("/v1/inwall/audit?kind=tool.call&limit=1000", cast_to=object)
    ana, eng = outcomes["analyst"], outcomes["engineer"]
    assert "ACME Corp" in ana[0] and "ACME Corp" in eng[0]
    # grow is hidden from analysts: the model is told it does not exist, nothing more.
    assert (
        ana[1] == "mcp__crm__grow [62 chars]: Error: tool 'mcp__crm__grow' is not available in this session."
    )
    assert eng[1].startswith("mcp__crm__grow [") and "grew a new tool" in eng[1]
    # Argument constraint: nobody may look up customer 13; the model learns only that it was denied.
    for lines in (ana, eng):
        assert lines[2] == "mcp__crm__lookup [35 chars]: The tool call was denied by policy."
    assert [c for c in state.calls if c == ("lookup", {"id": 13})] == []
    refused = [r for r in audit["data"] if r["outcome"] == "refused"]
    assert {r["tool"] for r in refused} == {"mcp__crm__grow", "mcp__crm__lookup"}
    assert all(r["user_id"] for r in refused)


async def test_a_broken_policy_edit_keeps_the_old_policy(tmp_path: Path, crm: tuple[str, CrmState]) -> None:
    url, _ = crm
    policy = tmp_path / "policy.cedar"
    policy.write_text(POLICY)
    async with running_server(fast_settings(tmp_path / "data", policy_file=policy)) as server:
        env_id, agent_id, keys = await _setup(server, url)
        analyst_key = keys.split("|")[0]
        async with server.client() as admin, server.client(analyst_key) as client:
            policy.write_text(POLICY.replace("permit (principal in", "permitt (principal in", 1))
            with anyio.fail_after(10):
                while True:
                    status: Any = await admin.get("/v1/inwall/policy", cast_to=object)
                    if status["last_error"]:
                        break
                    await anyio.sleep(0.1)
            assert "policy.cedar:" in status["last_error"]
            assert "analysts-read-crm" in status["policies"]
            session = await client.beta.sessions.create(agent=agent_id, environment_id=env_id)
            _, answer = await run_turn(client, session.id, [call("mcp__crm__lookup", {"id": 1})])
            assert "ACME Corp" in answer  # the old policy still lets analysts read the CRM
            # A fixed file that forbids the CRM to analysts takes effect.
            policy.write_text(
                POLICY.replace('resource.mcp_server == "crm"', 'resource.mcp_server == "nothing"')
            )
            with anyio.fail_after(20):
                while True:
                    _, answer = await run_turn(client, session.id, [call("mcp__crm__t0")])
                    if "not available" in answer:
                        break
                    await anyio.sleep(0.1)
            status = await admin.get("/v1/inwall/policy", cast_to=object)
            assert status["last_error"] is None


async def test_oidc_end_user_tokens(
    tmp_path: Path, crm: tuple[str, CrmState], provider: Provider, rsa_key: Any, other_rsa_key: Any
) -> None:
    url, _ = crm
    provider.add_key(rsa_key.public_key(), kid="k1")
    policy = tmp_path / "policy.cedar"
    policy.write_text(POLICY)
    settings = fast_settings(
        tmp_path / "data", policy_file=policy, oidc_issuer=provider.issuer, oidc_audience="inwall-app"
    )

    def token(key: Any = rsa_key, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": provider.issuer,
            "aud": "inwall-app",
            "sub": "alice",
            "iat": now,
            "exp": now + 300,
            "groups": ["analyst"],
            "email": "alice@example.com",
            **claims,
        }
        return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})

    async with running_server(settings) as server, server.client() as admin:
        env = await admin.beta.environments.create(name="oidc", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(**mcp_agent(url))
        for bad in (token(other_rsa_key), token(aud="someone-else"), token(exp=int(time.time()) - 3600)):
            with pytest.raises(AuthenticationError):
                await admin.beta.sessions.create(
                    agent=agent.id, environment_id=env.id, extra_headers={"x-inwall-end-user-token": bad}
                )
        session = await admin.beta.sessions.create(
            agent=agent.id, environment_id=env.id, extra_headers={"x-inwall-end-user-token": token()}
        )
        assert session.model_extra["acting_for"]["roles"] == ["analyst"]  # type: ignore[index]
        _, answer = await run_turn(admin, session.id, [call("mcp__crm__grow"), call("mcp__crm__t1")])
        audit: Any = await admin.get("/v1/inwall/audit?kind=auth.denied", cast_to=object)
    lines = answer.splitlines()
    assert "not available" in lines[0]  # end user alice is an analyst: grow stays hidden
    assert lines[1] == "mcp__crm__t1 [5 chars]: t1 ok"
    assert len(audit["data"]) == 3 and all(r["outcome"] == "401" for r in audit["data"])


async def test_no_oidc_configured_refuses_end_user_tokens(tmp_path: Path) -> None:
    async with running_server(fast_settings(tmp_path)) as server, server.client() as admin:
        env = await admin.beta.environments.create(name="x", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(name="a", model="inwall-scripted")
        with pytest.raises(BadRequestError, match="--oidc-issuer"):
            await admin.beta.sessions.create(
                agent=agent.id, environment_id=env.id, extra_headers={"x-inwall-end-user-token": "x.y.z"}
            )


async def test_audit_export_verifies_and_detects_tampering(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with running_server(fast_settings(data)) as server, server.client() as admin:
        for _ in range(3):
            async with server.client("sk-wrong") as bad:
                with pytest.raises(AuthenticationError):
                    await bad.beta.agents.list()
        exported = await admin.get("/v1/inwall/audit?format=jsonl", cast_to=str)
    log_file = tmp_path / "audit.jsonl"
    log_file.write_text(exported)
    verify = [sys.executable, "-m", "inwall.cli.main", "audit", "verify", str(log_file)]
    assert subprocess.run(verify, capture_output=True, check=False).returncode == 0
    lines = exported.splitlines()
    record = json.loads(lines[1])
    record["path"] = "/v1/somewhere-else"
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    log_file.write_text("\n".join(lines) + "\n")
    result = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "hash_mismatch" in result.stdout
    log_file.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # a deleted record
    result = subprocess.run(verify, capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "broken_link" in result.stdout


async def test_worker_identity_names_the_call_a_worker_may_run(tmp_path: Path) -> None:
    """A denied call (and one still awaiting its verdict) is never the 'pending' one a worker runs."""
    from inwall.governance import IdentityVerifier, input_digest

    settings = fast_settings(tmp_path / "data")
    async with running_server(settings) as server, server.client() as admin:
        env = await admin.beta.environments.create(name="w", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(
            name="a",
            model="inwall-scripted",
            tools=[
                {
                    "type": "agent_toolset_20260401",
                    "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
                }
            ],
        )
        key: Any = await admin.post(f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={})
        session = await admin.beta.sessions.create(agent=agent.id, environment_id=env.id)
        await admin.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.message",
                    "content": [{"type": "text", "text": call("bash", {"command": "rm -rf x"})}],
                }
            ],
        )
        with anyio.fail_after(10):
            while True:
                events = [e async for e in admin.beta.sessions.events.list(session.id)]
                asks = [e for e in events if e.type == "agent.tool_use"]
                if asks:
                    break
                await anyio.sleep(0.05)
        async with server.client(key["key"]) as worker:
            path = f"/v1/inwall/sessions/{session.id}/identity"
            with pytest.raises(anthropic.NotFoundError):  # awaiting its verdict: no worker runs it yet
                await worker.get(path, cast_to=object)
            await admin.beta.sessions.events.send(
                session.id,
                events=[{"type": "user.tool_confirmation", "tool_use_id": asks[0].id, "result": "deny"}],
            )
            with anyio.fail_after(10):  # the denial ends that turn
                while (await admin.beta.sessions.retrieve(session.id)).status != "idle":
                    await anyio.sleep(0.05)
            await admin.beta.sessions.events.send(
                session.id,
                events=[
                    {
                        "type": "user.message",
                        "content": [{"type": "text", "text": call("read", {"file_path": "notes.txt"})}],
                    }
                ],
            )
            with anyio.fail_after(10):  # no worker here: the read waits for one
                while not [
                    e
                    async for e in admin.beta.sessions.events.list(session.id)
                    if getattr(e, "name", "") == "read"
                ]:
                    await anyio.sleep(0.05)
            answer: Any = await worker.get(path, cast_to=object)
            assert answer["tool"] == "read"
            named: Any = await worker.get(
                path,
                cast_to=object,
                options={
                    "params": {"tool": "read", "input_sha256": input_digest({"file_path": "notes.txt"})}
                },
            )
            assert named["tool_use_id"] == answer["tool_use_id"]
            with pytest.raises(anthropic.NotFoundError):
                await worker.get(path, cast_to=object, options={"params": {"tool": "bash"}})
    verifier = IdentityVerifier(
        (settings.data_dir / "identity_ed25519.pub.pem").read_bytes(), audience=f"inwall-worker:{env.id}"
    )
    verified = verifier.verify(
        answer["token"], tool="read", input_sha256=input_digest({"file_path": "notes.txt"})
    )
    assert verified.identity.kind == "admin"
