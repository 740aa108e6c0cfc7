"""The demo: the whole product on one machine, watched live.

It starts, each as its own program: the control plane (in this process, on
an embedded SQLite database in a temporary directory), an ``inwall worker``
(tools run in a bubblewrap sandbox) and an ``inwall gateway`` that dials out
to the control plane and exposes a private "customer database" MCP server
through a tunnel. Then it runs one session and prints its events as they
arrive. Without ``ANTHROPIC_API_KEY`` the agent is the scripted model, so the
demo needs no network at all; with a key it is Claude doing a small task.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anthropic import AsyncAnthropic
from rich.console import Console

from inwall.demo.transcript import Transcript
from inwall.server.serve import Bound, serve
from inwall.server.settings import ServerSettings

__all__ = ["DemoResult", "run_demo"]

SCRIPTED_TASK = "\n".join(
    [
        "Prepare dunning notes for overdue invoices, using the customer database and every sandbox tool.",
        "call mcp__crm__overdue_invoices {}",
        'call mcp__crm__find_customer {"name": "Acme"}',
        "call mcp__crm__customer_emails {}",
        'call bash {"command": "echo \\"hello from $(uname -s), inside the sandbox, as uid $(id -u)\\""}',
        'call write {"file_path": "dunning.md", "content": "# Dunning\\nINV-1002 Acme Corp 8200.00 EUR\\n'
        'INV-1003 Globex 3150.50 EUR\\nstatus: draft\\n"}',
        'call edit {"file_path": "dunning.md", "old_string": "status: draft", "new_string": "status: ready"}',
        'call read {"file_path": "dunning.md"}',
        'call glob {"pattern": "*.md"}',
        'call grep {"pattern": "EUR", "path": "dunning.md"}',
        'call bash {"command": "python3 -c \'print(\\"total overdue:\\", 8200.00 + 3150.50)\'"}',
        'call bash {"command": "cat /etc/shadow"}',
    ]
)
CLAUDE_TASK = (
    "Use the customer database to find the overdue invoices, then write a short dunning note for each "
    "customer into dunning.md in the working directory, and show me the file."
)


@dataclass
class DemoResult:
    session_id: str
    status: str
    event_types: list[str]
    tool_calls: int
    elapsed_s: float

    def as_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "event_types": self.event_types,
            "tool_calls": self.tool_calls,
            "elapsed_s": round(self.elapsed_s, 3),
        }


class Child:
    """A program the demo started: its stderr is kept (for errors) and watched for a ready line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready: str, log: Path) -> None:
        self.name = name
        self.ready_text = ready
        self.ready = threading.Event()
        self.log = log
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        with self.log.open("wb") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                if self.ready_text.encode() in line:
                    self.ready.set()

    async def wait_ready(self, timeout_s: float) -> None:
        with anyio.fail_after(timeout_s):
            while not self.ready.is_set():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
                await anyio.sleep(0.05)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextlib.contextmanager
def _children() -> Iterator[list[Child]]:
    children: list[Child] = []
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()


@contextlib.asynccontextmanager
async def _server(data_dir: Path) -> AsyncIterator[Bound]:
    settings = ServerSettings.from_env(data_dir, port=0, log_level="warning")
    async with anyio.create_task_group() as tg:
        bound: Bound = await tg.start(lambda task_status: serve(settings, task_status=task_status))
        try:
            yield bound
        finally:
            tg.cancel_scope.cancel()


def _clean_env(**extra: str) -> dict[str, str]:
    """Children get no model keys or inwall secrets from this process, only what they need."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "INWALL_", "OPENAI_"))}
    env.update(extra)
    return env


async def run_demo(
    console: Console, *, model: str | None = None, unsandboxed: bool = False, timeout_s: float = 240.0
) -> DemoResult:
    use_claude = bool(os.environ.get("ANTHROPIC_API_KEY")) and model != "inwall-scripted"
    model_id = model or (
        os.environ.get("INWALL_DEMO_MODEL", "claude-sonnet-4-5") if use_claude else "inwall-scripted"
    )
    task = CLAUDE_TASK if use_claude else SCRIPTED_TASK
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="inwall-demo-") as tmp, _children() as children:
        root = Path(tmp)
        os.chmod(root, 0o711)  # noqa: S103 - traverse only, no listing: the sandbox's unprivileged uid must be able to reach the workspace below
        workdir = root / "worker"
        workdir.mkdir(mode=0o711)
        console.print(f"[bold]inwall demo[/bold] — model [cyan]{model_id}[/cyan], everything in {root}")
        async with _server(root / "data") as bound:
            admin_key = (root / "data" / "admin_key").read_text().strip()
            console.print(f"  control plane  {bound.base_url} (SQLite, admin key in data/admin_key)")
            async with AsyncAnthropic(base_url=bound.base_url, api_key=admin_key) as client:
                gateway = await _start_gateway(client, bound, root, children)
                console.print(f"  gateway        dialled out; tunnel {gateway['tunnel_id']} is up")
                env = await client.beta.environments.create(
                    name="demo-perimeter", config={"type": "self_hosted"}
                )
                minted: Any = await client.post(
                    f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={}
                )
                worker = _start_worker(bound, env.id, minted["key"], workdir, root, children, unsandboxed)
                await worker.wait_ready(60)
                console.print(
                    "  worker         polling, tools in a bubblewrap sandbox"
                    if not unsandboxed
                    else "  worker         [red]the SDK's stock worker, UNSANDBOXED (--unsandboxed)[/red]"
                )
                agent = await client.beta.agents.create(
                    name="demo-agent",
                    model=model_id,
                    system="You are a careful assistant. Your tools run in a sandbox inside the network.",
                    mcp_servers=[
                        {"type": "url", "name": "crm", "url": f"https://crm.{gateway['domain']}/mcp"}
                    ],
                    tools=[
                        {"type": "agent_toolset_20260401"},
                        {
                            "type": "mcp_toolset",
                            "mcp_server_name": "crm",
                            "default_config": {"permission_policy": {"type": "always_allow"}},
                        },
                    ],
                )
                session = await client.beta.sessions.create(
                    agent=agent.id, environment_id=env.id, title="demo"
                )
                console.print()
                status = await _watch(client, session.id, task, Transcript(console), timeout_s)
                events = [e async for e in client.beta.sessions.events.list(session.id, limit=1000)]
        kinds = [str(e.type) for e in events]
        tool_calls = sum(
            k in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use") for k in kinds
        )
        return DemoResult(session.id, status, kinds, tool_calls, time.monotonic() - started)


async def _start_gateway(
    client: AsyncAnthropic, bound: Bound, root: Path, children: list[Child]
) -> dict[str, str]:
    from inwall.gateway.certs import create_certificates

    tunnel = await client.beta.tunnels.create(display_name="demo private network")
    certs = create_certificates(tunnel.domain, root / "gateway" / "certs")
    await client.beta.tunnels.certificates.create(tunnel.id, ca_certificate_pem=certs.ca_cert.read_text())
    token = (await client.beta.tunnels.reveal_token(tunnel.id)).tunnel_token
    config = root / "gateway" / "gateway.toml"
    command = json.dumps([sys.executable, "-m", "inwall.demo.customer_db"])
    config.write_text(
        "\n".join(
            [
                "[gateway]",
                "connections = 2",
                f'audit_log = "{root / "gateway" / "audit.jsonl"}"',
                "[tls]",
                f'cert_file = "{certs.server_cert}"',
                f'key_file = "{certs.server_key}"',
                "# Every call must carry the control plane's signed statement of who is calling.",
                "[identity]",
                f'public_key_file = "{root / "data" / "identity_ed25519.pub.pem"}"',
                f'tunnel_id = "{tunnel.id}"',
                "required = true",
                "# Secrets in results are redacted before they leave the network.",
                "[redact]",
                'builtins = ["api_keys", "card_numbers", "emails"]',
                "[stdio.crm]",
                f"command = {command}",
                "# The perimeter decides: contact addresses never leave the network.",
                'deny_tools = ["customer_emails"]',
                "",
            ]
        )
    )
    gateway = Child(
        "inwall gateway",
        [
            sys.executable,
            "-m",
            "inwall.cli.main",
            "gateway",
            "--config",
            str(config),
            "--base-url",
            bound.base_url,
        ],
        _clean_env(INWALL_TUNNEL_TOKEN=token),
        ready="tunnel up",
        log=root / "gateway" / "gateway.log",
    )
    children.append(gateway)
    await gateway.wait_ready(60)
    return {"tunnel_id": tunnel.id, "domain": tunnel.domain}


def _start_worker(
    bound: Bound, env_id: str, key: str, workdir: Path, root: Path, children: list[Child], unsandboxed: bool
) -> Child:
    env = _clean_env(
        ANTHROPIC_BASE_URL=bound.base_url, ANTHROPIC_ENVIRONMENT_ID=env_id, ANTHROPIC_ENVIRONMENT_KEY=key
    )
    if unsandboxed:
        argv = [sys.executable, "-m", "inwall.demo.stock_worker", str(workdir)]
        worker = Child("stock worker", argv, env, ready="", log=root / "worker.log")
        worker.ready.set()
    else:
        argv = [
            sys.executable,
            "-m",
            "inwall.cli.main",
            "worker",
            "--workdir",
            str(workdir),
            "--max-idle",
            "30",
        ]
        worker = Child("inwall worker", argv, env, ready="inwall worker ready", log=root / "worker.log")
    children.append(worker)
    return worker


async def _watch(
    client: AsyncAnthropic, session_id: str, task: str, transcript: Transcript, timeout_s: float
) -> str:
    """Stream the session live until its turn ends; returns the final status."""
    seen: set[str] = set()
    status = "running"
    with anyio.fail_after(timeout_s):
        async with await client.beta.sessions.events.stream(session_id) as stream:
            await client.beta.sessions.events.send(
                session_id, events=[{"type": "user.message", "content": [{"type": "text", "text": task}]}]
            )
            async for ev in stream:
                event_id = getattr(ev, "id", None)  # previews (event_start/delta) carry none
                if event_id is None or event_id in seen:
                    continue
                seen.add(event_id)
                transcript.show(ev)
                if ev.type == "session.status_idle" and ev.stop_reason.type != "requires_action":
                    status = "idle"
                    break
                if ev.type == "session.status_terminated":
                    status = "terminated"
                    break
    return status


def main(*, as_json: bool, model: str | None, unsandboxed: bool = False) -> int:
    console = Console(stderr=as_json, highlight=False)
    try:
        result = anyio.run(lambda: run_demo(console, model=model, unsandboxed=unsandboxed))
    except TimeoutError:
        console.print("[red]demo timed out: the session did not finish[/red]")
        return 1
    except RuntimeError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    console.print(
        f"\n[bold green]done[/bold green]: session {result.session_id} is {result.status} after "
        f"{result.tool_calls} tool calls in {result.elapsed_s:.1f}s"
    )
    if as_json:
        print(json.dumps(result.as_json()))
    return 0 if result.status == "idle" else 1
