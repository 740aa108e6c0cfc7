"""The perimeter end to end: ``inwall server`` + ``inwall worker`` (a child process) + the official SDK.

Users with roles create sessions with their own keys, so the identity the
control plane signs carries their roles; the worker pins the control
plane's public key from its data directory and enforces its own Cedar
policy and redaction. The last test is issue 5's "a bash call printing
1 MB reaches the model as a reference" through the inwall worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic import AsyncAnthropic

from inwall.agent.offload import estimate_tokens
from inwall.audit import verify_file
from inwall.governance import DENIAL_TEXT
from tests.helpers import fast_settings, mint_env_key, running_server, wait_for_events, wait_until
from tests.mcp.conftest import call, run_turn

from .conftest import Env, WorkerProcess, end_turn
from .test_e2e import records, results, script, start_session

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

WORKER_POLICY = """
@id("analysts-no-bash")
forbid (principal in Inwall::Role::"analyst", action, resource == Inwall::Tool::"bash");

@id("signed-users")
permit (principal, action, resource) when { principal.kind == "user" };
"""

SECRETS = ("sk-ant-api03-" + "Qw7" * 12, "bob.private@example.org", "5555 5555 5555 4444")


async def _user(admin: AsyncAnthropic, name: str, roles: list[str]) -> str:
    user: Any = await admin.post("/v1/inwall/users", cast_to=object, body={"name": name, "roles": roles})
    key: Any = await admin.post(f"/v1/inwall/users/{user['id']}/keys", cast_to=object, body={})
    return str(key["key"])


async def test_a_call_the_control_plane_allows_stays_denied_by_the_workers_policy(
    tmp_path: Path, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    cp_policy = tmp_path / "control-plane.cedar"
    cp_policy.write_text('@id("everyone-everything") permit (principal, action, resource);\n')
    worker_policy = ws_root / "worker.cedar"
    worker_policy.write_text(WORKER_POLICY)
    data = tmp_path / "data"
    async with running_server(fast_settings(data, policy_file=cp_policy)) as server, server.client() as admin:
        env = await admin.beta.environments.create(name="perimeter", config={"type": "self_hosted"})
        agent = await admin.beta.agents.create(
            name="scripted", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
        )
        keys = {
            "analyst": await _user(admin, "ana", ["analyst"]),
            "engineer": await _user(admin, "eng", ["engineer"]),
        }
        worker = WorkerProcess(
            server.base_url,
            Env(admin, env.id, agent.id, await mint_env_key(admin, env.id)),
            ws_root / "w",
            "--max-idle", "2",
            "--identity-public-key", str(data / "identity_ed25519.pub.pem"),
            "--require-identity",
            "--policy", str(worker_policy), "--policy-interval", "0.1",
            "--redact", "api_keys", "--redact", "emails", "--redact", "card_numbers",
        )  # fmt: skip
        workers.append(worker.start())
        await worker.wait_ready()
        scripts = {
            "analyst": script(
                ("bash", {"command": "touch analyst-ran-bash"}),
                ("write", {"file_path": "ana.txt", "content": "analysts may write"}),
            ),
            "engineer": script(("bash", {"command": f"touch engineer-ran-bash; echo '{' '.join(SECRETS)}'"})),
        }
        got: dict[str, list[tuple[bool, str]]] = {}
        sessions: dict[str, str] = {}
        for who, text in scripts.items():
            async with server.client(keys[who]) as client:
                sid = await start_session(Env(client, env.id, agent.id, ""), text)
                sessions[who] = sid
                got[who] = results(await wait_for_events(client, sid, end_turn, within=60))
        # a broken edit is reported (log and audit) without a call to trigger it; the old policy stays
        worker_policy.write_text(WORKER_POLICY.replace("forbid (", "forbidd ("))
        await wait_until(lambda: _logged(worker, "rejected; the previous policy stays in force"), within=15)
        assert await worker.stop() == 0, worker.log()[-3000:]
    ws = ws_root / "w" / "sessions"
    # The analyst's bash: allowed by the control plane, refused by the worker; it never ran.
    assert got["analyst"] == [(True, DENIAL_TEXT), (False, "wrote 18 bytes to ana.txt")]
    assert not (ws / sessions["analyst"] / "analyst-ran-bash").exists()
    assert (ws / sessions["analyst"] / "ana.txt").read_text() == "analysts may write"  # positive control
    # The engineer's bash ran, and what it printed left the perimeter redacted.
    assert got["engineer"] == [(False, "[REDACTED:api_keys] [REDACTED:emails] [REDACTED:card_numbers]")]
    assert (ws / sessions["engineer"] / "engineer-ran-bash").exists()
    audit = ws_root / "w" / "audit.jsonl"
    assert verify_file(audit).ok
    calls = [r for r in records(audit) if r["kind"] == "tool_call"]
    seen = [
        (
            c["tool"],
            c["outcome"],
            c["perimeter"]["identity"],
            c["perimeter"]["roles"],
            c["perimeter"].get("policies"),
        )
        for c in calls
    ]
    assert seen == [
        ("bash", "denied", "verified", ["analyst"], ["analysts-no-bash"]),
        ("write", "ok", "verified", ["analyst"], ["signed-users"]),
        ("bash", "ok", "verified", ["engineer"], ["signed-users"]),
    ]
    callers = [c["perimeter"]["caller"] for c in calls]
    assert callers[0] == callers[1] != callers[2] and "anonymous" not in callers
    assert calls[2]["redactions"] == [
        {"pattern": "api_keys", "count": 1},
        {"pattern": "card_numbers", "count": 1},
        {"pattern": "emails", "count": 1},
    ]
    [rejected] = [r for r in records(audit) if r["kind"] == "perimeter_policy_rejected"]
    assert "worker.cedar" in rejected["message"] and "previous policy stays in force" in rejected["message"]
    started = next(r for r in records(audit) if r["kind"] == "worker_started")
    assert started["perimeter"]["identity"] == "required"
    for text in (audit.read_text(), worker.log()):
        assert not any(secret in text for secret in SECRETS)


async def _logged(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log()


ROW = "row {:06d} abcdefghijklmnopqrstuvwxyz0123"


@pytest.mark.slow
async def test_a_1mb_bash_output_reaches_the_control_plane_whole_and_is_offloaded(
    tmp_path: Path, ws_root: Path, workers: list[WorkerProcess]
) -> None:
    rows = 25_000
    full = "\n".join(ROW.format(i) for i in range(1, rows + 1))
    assert len(full) > 1_000_000
    data = tmp_path / "data"
    async with running_server(fast_settings(data)) as server, server.client() as client:
        env = await client.beta.environments.create(name="offload", config={"type": "self_hosted"})
        agent = await client.beta.agents.create(
            name="scripted", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
        )
        worker = WorkerProcess(
            server.base_url,
            Env(client, env.id, agent.id, await mint_env_key(client, env.id)),
            ws_root / "w",
            "--max-idle", "30",
            # the perimeter on: the control plane's internal offload write passes it like any call
            "--identity-public-key", str(data / "identity_ed25519.pub.pem"),
            "--require-identity",
        )  # fmt: skip
        workers.append(worker.start())
        await worker.wait_ready()
        session = await client.beta.sessions.create(agent=agent.id, environment_id=env.id)
        command = f"seq -f 'row %06g abcdefghijklmnopqrstuvwxyz0123' 1 {rows}"
        events, answer = await run_turn(client, session.id, [call("bash", {"command": command})], timeout=60)
        [write] = [e for e in events if e.type == "agent.tool_use" and e.name == "write"]
        offload = write.model_extra["inwall_offload"]  # type: ignore[index]
        path = offload["file_path"]
        _, sliced = await run_turn(
            client, session.id, [call("read", {"file_path": path, "view_range": [100, 101]})], timeout=60
        )
        assert await worker.stop() == 0, worker.log()[-3000:]
    # The whole megabyte reached the control plane (the SDK's bash would have kept 100 KiB) ...
    [bash] = [e for e in events if e.type == "agent.tool_use" and e.name == "bash"]
    [result] = [e for e in events if e.type == "user.tool_result" and e.tool_use_id == bash.id]
    assert not result.is_error
    assert "".join(b.text for b in result.content) == full
    assert offload["size_bytes"] == len(full) and offload["estimated_tokens"] == estimate_tokens(full)
    # ... the model saw a short note naming the file ...
    first = answer.splitlines()[0]
    assert int(first.split("[", 1)[1].split(" chars]")[0]) < 5000
    assert path in answer and f"{len(full):,} bytes" in answer and ROW.format(1) in answer
    # ... the file holds it all, written by the worker, and a later read slices it.
    assert (ws_root / "w" / "sessions" / session.id / path).read_text() == full
    assert sliced.splitlines()[:2] == [
        f"read [{len(ROW.format(100)) * 2 + 1} chars]: {ROW.format(100)}",
        ROW.format(101),
    ]
    calls = [r for r in records(ws_root / "w" / "audit.jsonl") if r["kind"] == "tool_call"]
    assert [(c["tool"], c["perimeter"]["identity"]) for c in calls] == [
        ("bash", "verified"),
        ("write", "verified"),
        ("read", "verified"),
    ]
    assert json.dumps(answer)
