"""A session's sandboxed tools without a server: violations, audit, snapshots, interruption, recovery.

Every refusal test also shows the sandbox ran the command (a positive control).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import anyio
import pytest
from anthropic.lib.tools import ToolError

from inwall.audit import verify_file
from inwall.sandbox import SandboxSettings
from inwall.sandbox.violations import MAX_RENDERED, EgressDenied
from inwall.worker.runtime import INTERRUPTED
from inwall.worker.snapshots import DirectoryStore
from tests.sandbox.egress.helpers import http_origin

from .conftest import Runtime, session_runtime, wait_for_path

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_calls_are_audited_by_digest_never_by_content(runtime: Runtime) -> None:
    secret = "s3cr3t-value-that-must-not-be-logged"
    out = await runtime.rt.run_call("bash", {"command": f"echo {secret} > note; echo done"})
    assert out.ok and out.content == "done"
    assert (runtime.workspace / "note").read_text() == secret + "\n"  # positive control
    await runtime.rt.run_call("read", {"file_path": "note"})
    text = runtime.audit_path.read_text()
    assert secret not in text
    calls = [r for r in records(runtime.audit_path) if r["kind"] == "tool_call"]
    assert [c["tool"] for c in calls] == ["bash", "read"]
    assert all(len(str(c["input_sha256"])) == 64 for c in calls)
    assert (
        calls[0]["exit_code"] == 0
        and calls[0]["outcome"] == "ok"
        and calls[1]["bytes_out"] == len(secret) + 1
    )
    assert verify_file(runtime.audit_path).ok


async def test_snapshots_follow_changes_not_reads(runtime: Runtime) -> None:
    manifests = runtime.root / "snapshots" / "manifests" / "sesn_test"

    def count() -> int:
        return len(list(manifests.glob("*.json"))) if manifests.exists() else 0

    await runtime.tools["write"].call({"file_path": "a.txt", "content": "1"})
    assert count() == 1
    for tool, args in (
        ("read", {"file_path": "a.txt"}),
        ("glob", {"pattern": "*"}),
        ("grep", {"pattern": "1"}),
    ):
        await runtime.tools[tool].call(args)
    await runtime.tools["bash"].call({"command": "true"})
    assert count() == 1  # nothing changed
    await runtime.tools["bash"].call({"command": "echo 2 > b.txt"})
    await runtime.tools["edit"].call({"file_path": "a.txt", "old_string": "1", "new_string": "one"})
    assert count() == 3
    body = json.loads(sorted(manifests.glob("*.json"))[-1].read_text())
    assert sorted(r[0] for r in body["entries"]) == ["a.txt", "b.txt"]  # no bubblewrap mount points


async def test_egress_denials_reach_the_model_and_the_audit(ws_root: Path) -> None:
    async with http_origin() as allowed, http_origin() as other:
        settings = SandboxSettings.from_dict({"network": {"allowedDomains": [f"localhost:{allowed.port}"]}})
        async with session_runtime(ws_root, settings=settings) as r:
            curl = "curl -sS --max-time 10 --noproxy ''"
            ok = await r.rt.run_call("bash", {"command": f"{curl} http://localhost:{allowed.port}/"})
            assert ok.ok and "hello from origin" in str(
                ok.content
            )  # positive control: the allowlisted origin
            denied = await r.rt.run_call(
                "bash", {"command": f"{curl} -w 'code=%{{http_code}}' http://localhost:{other.port}/"}
            )
            text = str(denied.content)
            assert "code=403" in text and f"egress to localhost:{other.port} denied" in text
            assert "<sandbox_violations>" in text and f"deny network-outbound localhost:{other.port}" in text
            assert other.connections == 0 and allowed.connections == 1
        kinds = [(rec["kind"], rec.get("violation"), rec.get("decision")) for rec in records(r.audit_path)]
        assert ("egress", None, "allowed") in kinds and ("egress", None, "denied") in kinds
        assert ("sandbox_violation", "egress_denied", None) in kinds
        assert verify_file(r.audit_path).ok


async def test_filesystem_denials_are_typed_and_shown(runtime: Runtime) -> None:
    out = await runtime.rt.run_call(
        "bash", {"command": "echo in > mine.txt; cat /etc/shadow; echo x > /usr/owned"}
    )
    assert (runtime.workspace / "mine.txt").read_text() == "in\n"  # positive control
    assert not out.ok
    assert "deny file-access /etc/shadow (Permission denied)" in str(out.content)
    assert "deny file-write /usr/owned (Read-only file system)" in str(out.content)
    denied = await runtime.rt.run_call("write", {"file_path": ".bashrc", "content": "evil"})
    assert not denied.ok and str(denied.content).startswith("write: .bashrc: ")
    assert "<sandbox_violations>" in str(denied.content)
    vio = [r for r in records(runtime.audit_path) if r["kind"] == "sandbox_violation"]
    assert {r["violation"] for r in vio} == {"filesystem_denied"} and len(vio) == 3


async def test_abort_interrupts_and_the_shell_needs_a_restart(runtime: Runtime) -> None:
    results = []

    async def long_call() -> None:
        results.append(await runtime.rt.run_call("bash", {"command": "touch started; sleep 30"}))

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_call)
        await wait_for_path(runtime.workspace / "started")
        runtime.rt.abort_inflight()
    (out,) = results
    assert not out.ok and out.content == f"bash: {INTERRUPTED}" and out.outcome == "interrupted"


async def test_outer_cancellation_kills_the_shell_like_the_sdk(runtime: Runtime) -> None:
    """The SDK runner's 150 s cap cancels the call; the shell is then dead until a restart (SDK semantics)."""
    first = await runtime.rt.run_call("bash", {"command": "echo $$"})
    pid = runtime.rt._shim.pid if runtime.rt._shim else None
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            await runtime.tools["bash"].call({"command": "touch started; sleep 30"})

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await wait_for_path(runtime.workspace / "started")
        scope.cancel()
    with pytest.raises(ToolError) as err:
        await runtime.tools["bash"].call({"command": "echo alive"})
    assert str(err.value) == "bash: bash session terminated; restart required"
    assert runtime.rt._shim is not None and runtime.rt._shim.pid == pid
    assert await runtime.tools["bash"].call({"restart": True}) == "bash session restarted"
    again = await runtime.rt.run_call("bash", {"command": "echo $$"})
    assert again.ok and again.content != first.content
    assert any(r.get("outcome") == "cancelled" for r in records(runtime.audit_path))


async def test_a_command_that_kills_everything_is_survived(runtime: Runtime) -> None:
    out = await runtime.rt.run_call("bash", {"command": "echo before > proof; kill -9 -1"})
    assert not out.ok
    assert (runtime.workspace / "proof").read_text() == "before\n"  # positive control
    dead = await runtime.rt.run_call("bash", {"command": "echo x"})
    assert dead.content == "bash: bash session terminated; restart required"
    assert (await runtime.rt.run_call("read", {"file_path": "proof"})).content == "before\n"
    assert (await runtime.rt.run_call("bash", {"restart": True})).ok
    assert (await runtime.rt.run_call("bash", {"command": "cat proof"})).content == "before"


async def test_sandbox_limits_are_violations(ws_root: Path) -> None:
    settings = SandboxSettings.default().with_limits(timeout_s=0.5, disk_mb=1)
    async with session_runtime(ws_root, settings=settings) as r:
        slow = await r.rt.run_call("bash", {"command": "sleep 5"})
        assert slow.content == (
            "bash: bash command timed out after 0.5s\n<sandbox_violations>\n"
            "limit timeout_s=0.5 exceeded: command killed\n</sandbox_violations>"
        )
        assert (await r.rt.run_call("bash", {"restart": True})).ok
        big = await r.rt.run_call("bash", {"command": "head -c 3000000 /dev/zero > big; echo rc=$?"})
        assert "rc=153" in str(big.content)  # SIGXFSZ: the file size limit stopped the write
        assert "limit disk_mb=1 exceeded" in str(big.content)
        assert (
            r.workspace / "big"
        ).stat().st_size == 1024 * 1024  # positive control: it ran, up to the limit


async def test_a_host_that_cannot_sandbox_refuses_calls(ws_root: Path) -> None:
    settings = SandboxSettings.from_dict({"bwrapPath": "/nonexistent/bwrap"})
    async with session_runtime(ws_root, settings=settings) as r:
        out = await r.rt.run_call("read", {"file_path": "x"})
    assert not out.ok and str(out.content).startswith("read: the sandbox could not start: ")
    assert "bwrapPath /nonexistent/bwrap" in str(out.content)


async def test_sessions_cannot_see_each_other(ws_root: Path) -> None:
    async with (
        session_runtime(ws_root, session_id="sesn_a") as a,
        session_runtime(ws_root, session_id="sesn_b") as b,
    ):
        assert (await a.rt.run_call("write", {"file_path": "secret.txt", "content": "A's secret"})).ok
        assert (await b.rt.run_call("write", {"file_path": "mine.txt", "content": "B"})).ok
        peek = await b.rt.run_call(
            "bash", {"command": "ls -a ..; cat ../sesn_a/secret.txt; ls /proc | grep -c '^[0-9]'"}
        )
        text = str(peek.content)
        assert "sesn_a" not in text.split("cat:", maxsplit=1)[0]  # the sibling is not even listed
        assert "No such file or directory" in text and "A's secret" not in text
        abs_read = await b.rt.run_call("read", {"file_path": str(a.workspace / "secret.txt")})
        assert "outside the session's working directory" in str(abs_read.content)
        assert (
            await a.rt.run_call("read", {"file_path": "secret.txt"})
        ).content == "A's secret"  # positive control


async def test_a_flood_of_violations_stays_bounded(runtime: Runtime) -> None:
    """20,000 proxy denials between two results: a bounded backlog, block and audit field."""
    for i in range(20_000):  # as the sandbox reports them: through the session's violation callback
        runtime.rt._on_violation(EgressDenied(host=f"h{i}.example", port=443, reason="not allowed"))
    assert len(runtime.rt._pending) <= 1000
    out = await runtime.rt.run_call("bash", {"command": "echo ran"})
    text = str(out.content)
    assert text.startswith("ran\n<sandbox_violations>\ndeny network-outbound h0.example:443 (not allowed)\n")
    lines = text.splitlines()
    assert len(lines) == 1 + 1 + MAX_RENDERED + 1 + 1
    assert lines[-2] == f"… and {20_000 - MAX_RENDERED} more" and lines[-1] == "</sandbox_violations>"
    (call,) = [r for r in records(runtime.audit_path) if r["kind"] == "tool_call"]
    assert call["violations"] == {"egress_denied": 20_000}
    again = await runtime.rt.run_call("bash", {"command": "echo clean"})
    assert again.content == "clean" and not again.omitted  # nothing carried over twice


class GatedStore(DirectoryStore):
    """A real snapshot store whose manifest write waits for the test: the snapshot is in progress."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gated = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def put_manifest(self, session_id: str, name: str, data: bytes) -> None:
        if self.gated:
            self.entered.set()
            self.release.wait(10)
        super().put_manifest(session_id, name, data)


async def test_a_timeout_during_the_snapshot_is_audited_as_cancelled(ws_root: Path) -> None:
    """The SDK's tool timeout fires while the shielded snapshot runs: the record still says what happened."""
    store = GatedStore(ws_root / "snapshots")
    async with session_runtime(ws_root, store=store) as r:
        assert (await r.rt.run_call("write", {"file_path": "first.txt", "content": "1"})).ok  # control
        store.gated = True
        scope = anyio.CancelScope()
        returned: list[object] = []

        async def call() -> None:
            with scope:
                returned.append(await r.tools["write"].call({"file_path": "a.txt", "content": "x"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            assert await anyio.to_thread.run_sync(store.entered.wait, 5)
            scope.cancel()  # as the runner's fail_after does
            store.release.set()
        assert returned == [] and scope.cancelled_caught
        assert (r.workspace / "a.txt").read_text() == "x"  # the write ran; its result was not returned
    calls = [rec for rec in records(r.audit_path) if rec["kind"] == "tool_call"]
    assert [(c["tool"], c["outcome"], c["is_error"]) for c in calls] == [
        ("write", "ok", False),
        ("write", "cancelled", True),
    ]
    assert verify_file(r.audit_path).ok
