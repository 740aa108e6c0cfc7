"""Fixtures for the worker suite: real bubblewrap, real workspaces, ``inwall worker`` as a child process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic import AsyncAnthropic

from inwall.sandbox import SandboxSettings
from inwall.sandbox.probe import check_host
from inwall.worker.identity import IdentitySource
from inwall.worker.perimeter import Perimeter
from inwall.worker.recorder import AuditRecorder
from inwall.worker.runtime import RuntimeOptions, SessionRuntime
from inwall.worker.snapshots import DirectoryStore, SnapshotStore
from tests.helpers import Server, fast_settings, mint_env_key, running_server, wait_until


@pytest.fixture(scope="session")
def sandbox_host() -> None:
    problems = check_host(deep=True).problems
    if problems:
        pytest.skip("host cannot sandbox: " + "; ".join(problems))


@pytest.fixture
def ws_root(sandbox_host: None) -> Iterator[Path]:
    """A 0711 directory the sandbox uid can traverse (pytest's tmp tree is 0700; /tmp is private inside)."""
    base = "/var/tmp" if os.geteuid() != 0 else "/srv"
    os.makedirs(base, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="inwall-wktest-", dir=base))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Runtime:
    """A SessionRuntime with its own store and audit log, served in the test's task group."""

    rt: SessionRuntime
    tools: dict[str, Any]
    root: Path
    audit_path: Path

    @property
    def workspace(self) -> Path:
        return self.rt.workspace


def runtime_options(
    root: Path,
    recorder: AuditRecorder | None,
    settings: SandboxSettings | None = None,
    perimeter: Perimeter | None = None,
    store: SnapshotStore | None = None,
) -> RuntimeOptions:
    return RuntimeOptions(
        settings=settings or SandboxSettings.default(),
        sessions_dir=root / "sessions",
        state_dir=root / "state",
        store=store or DirectoryStore(root / "snapshots"),
        recorder=recorder,
        cancel_grace_s=2.0,
        kill_grace_s=0.5,
        perimeter=perimeter,
    )


@pytest.fixture
async def runtime(ws_root: Path) -> AsyncIterator[Runtime]:
    async with session_runtime(ws_root) as r:
        yield r


class session_runtime:
    def __init__(
        self,
        root: Path,
        *,
        session_id: str = "sesn_test",
        settings: SandboxSettings | None = None,
        perimeter: Perimeter | None = None,
        identity: IdentitySource | None = None,
        store: SnapshotStore | None = None,
    ):
        self.root = root
        self.store = store
        self.session_id = session_id
        self.settings = settings
        self.perimeter = perimeter
        self.identity = identity

    async def __aenter__(self) -> Runtime:
        from inwall.audit import AuditLog

        self.audit_path = self.root / "audit.jsonl"
        self.recorder = AuditRecorder(AuditLog(self.audit_path), sync=True)
        self.rt = SessionRuntime(
            runtime_options(self.root, self.recorder, self.settings, self.perimeter, self.store),
            self.session_id,
            work_id="work_t",
            identity=self.identity,
        )
        await self.rt.__aenter__()
        return Runtime(self.rt, {t.name: t for t in self.rt.tools()}, self.root, self.audit_path)

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.rt.__aexit__(*exc)
        finally:
            self.recorder.close()
            if self.recorder.audit is not None:
                self.recorder.audit.close()


# --------------------------------------------------------------------------- end to end


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(fast_settings(tmp_path / "data")) as srv:
        yield srv


@dataclass
class Env:
    client: AsyncAnthropic
    environment_id: str
    agent_id: str
    key: str


async def make_env(client: AsyncAnthropic) -> Env:
    env = await client.beta.environments.create(name="wk", config={"type": "self_hosted"})
    agent = await client.beta.agents.create(
        name="scripted", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
    )
    return Env(client, env.id, agent.id, await mint_env_key(client, env.id))


@pytest.fixture
async def env(server: Server) -> AsyncIterator[Env]:
    async with server.client() as client:
        yield await make_env(client)


class WorkerProcess:
    """``inwall worker`` as a child process; the key goes in the environment, never on the command line."""

    def __init__(
        self, base_url: str, env: Env, workdir: Path, *args: str, log_name: str = "worker.log"
    ) -> None:
        self.base_url = base_url
        self.env = env
        self.workdir = workdir
        self.args = args
        self.log_path = workdir.parent / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        environ = {
            **os.environ,
            "ANTHROPIC_BASE_URL": self.base_url,
            "ANTHROPIC_ENVIRONMENT_ID": self.env.environment_id,
            "ANTHROPIC_ENVIRONMENT_KEY": self.env.key,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "inwall.cli.main",
                    "worker",
                    "--workdir",
                    str(self.workdir),
                    *self.args,
                ],
                env=environ,
                stdout=log,
                stderr=log,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_ready(self, within: float = 30.0) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early ({self.proc.returncode}):\n{self.log()[-3000:]}")
            return "inwall worker ready" in self.log()

        await wait_until(ready, within=within)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc

        async def exited() -> bool:
            return proc.poll() is not None

        await wait_until(exited, within=within)
        return int(proc.returncode)

    async def stop(self) -> int:
        self.signal(signal.SIGTERM)
        return await self.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    """Every worker a test starts is killed at the end, whatever happened."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


async def wait_for_path(path: Path, within: float = 30.0) -> None:
    """A file another process (a sandboxed command) creates: polled, bounded."""

    async def there() -> bool:
        return await anyio.Path(path).exists()

    await wait_until(there, within=within, interval=0.02)


def end_turn(events: list[Any]) -> bool:
    return any(e.type == "session.status_idle" and e.stop_reason.type == "end_turn" for e in events)
