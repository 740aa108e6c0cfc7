"""Control-plane overhead and concurrency, measured against baselines taken in the same run.

1. Round trip of a no-op built-in tool call: the scripted model asks for
   ``bash true`` N times in a row; the client watches the event stream and
   times each agent.tool_use → next agent.tool_use interval (server emits the
   call, the worker runs it and posts the result, the server folds it and asks
   the model, the next call reaches the client). The baseline is the same
   no-op run by the same tool object locally. Overhead = round trip - local.
   Target: ≤ 5 ms median on loopback.
2. 50 concurrent sessions of 10 tool calls each: errors (target 0),
   throughput (tool calls per second) and p99 per-call latency.

The server and the worker are separate processes (``inwall server`` and the
worker named by --worker), as in production; the bench process is the client.
``--worker inline`` has no worker process: the bench answers each call itself,
over raw HTTP/1.1 on the stream it times, so what remains is the control plane
alone (the SDK's worker spends ~4 ms of Python per call of its own).

    python bench/bench_control_plane.py [--calls 200] [--sessions 50] [--per-session 10]
                                        [--worker stock|inwall|inline]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from anthropic import AsyncAnthropic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import ServerProcess


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_worker(
    kind: str, base_url: str, env_id: str, key: str, workdir: Path, max_sessions: int
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    env.update(
        ANTHROPIC_BASE_URL=base_url,
        ANTHROPIC_ENVIRONMENT_ID=env_id,
        ANTHROPIC_ENVIRONMENT_KEY=key,
        INWALL_WORKER_MAX_IDLE="2",
    )
    if kind == "stock":
        argv = [sys.executable, "-m", "inwall.demo.stock_worker", str(workdir)]
    else:
        argv = [
            sys.executable,
            "-m",
            "inwall.cli.main",
            "worker",
            "--workdir",
            str(workdir),
            "--max-sessions",
            str(max_sessions),
            "--max-idle",
            "2",
        ]
    log = (workdir.parent / "worker.log").open("wb")
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


async def local_baseline(n: int, workdir: Path) -> list[float]:
    from anthropic.lib.tools.agent_toolset import AgentToolContext, beta_agent_toolset_20260401

    async with AgentToolContext(workdir=workdir) as ctx:
        bash = next(t for t in beta_agent_toolset_20260401(ctx) if t.name == "bash")
        await bash.call({"command": "true"})  # warm: the shell starts on first use
        out = []
        for _ in range(n):
            t = time.perf_counter()
            await bash.call({"command": "true"})
            out.append((time.perf_counter() - t) * 1000)
        from anthropic.lib.tools._beta_functions import aclose_runnable_tool

        await aclose_runnable_tool(bash)
        return out


async def one_session(client: AsyncAnthropic, agent_id: str, env_id: str, calls: int) -> list[float]:
    """Run one session of ``calls`` no-op calls; return the client-observed interval per call (ms)."""
    session = await client.beta.sessions.create(agent=agent_id, environment_id=env_id)
    script = "\n".join(["call bash " + json.dumps({"command": "true"})] * calls)
    stamps: list[float] = []
    async with await client.beta.sessions.events.stream(session.id) as stream:
        await client.beta.sessions.events.send(
            session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": script}]}]
        )
        async for ev in stream:
            if ev.type in ("agent.tool_use", "agent.message"):
                stamps.append(time.perf_counter())
            if ev.type == "session.status_idle" and ev.stop_reason.type == "end_turn":
                break
            if ev.type == "session.error":
                raise RuntimeError(f"session error: {ev.error.type}: {ev.error.message}")
    if len(stamps) != calls + 1:
        raise RuntimeError(f"expected {calls} tool calls and an answer, saw {len(stamps)} events")
    return [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]


class InlineWorker:
    """Answers tool calls from the bench process: a raw SSE reader and a raw POST per result."""

    def __init__(self, base_url: str, key: str) -> None:
        self.host, port = base_url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        self.headers = (
            f"host: {self.host}\r\nx-api-key: {key}\r\nanthropic-version: 2023-06-01\r\n"
            "anthropic-beta: managed-agents-2026-04-01\r\n"
        )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def session(self, client: AsyncAnthropic, agent_id: str, env_id: str, calls: int) -> list[float]:
        session = await client.beta.sessions.create(agent=agent_id, environment_id=env_id)
        sse, sse_w = await self._connect()
        post, post_w = await self._connect()
        stamps: list[float] = []
        try:
            sse_w.write(
                f"GET /v1/sessions/{session.id}/events/stream HTTP/1.1\r\n{self.headers}"
                "accept: text/event-stream\r\n\r\n".encode()
            )
            script = "\n".join(["call bash " + json.dumps({"command": "true"})] * calls)
            await client.beta.sessions.events.send(
                session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": script}]}]
            )
            buf = b""
            while True:
                data = await sse.read(65536)
                if not data:
                    raise RuntimeError("the event stream ended early")
                buf += data
                while b"\n\n" in buf:
                    message, buf = buf.split(b"\n\n", 1)
                    for line in message.split(b"\n"):
                        if not line.startswith(b"data: "):
                            continue
                        ev = json.loads(line[6:])
                        if ev["type"] in ("agent.tool_use", "agent.message"):
                            stamps.append(time.perf_counter())
                        if ev["type"] == "agent.tool_use":
                            await self._answer(post, post_w, session.id, ev["id"])
                        elif ev["type"] == "session.status_idle" and ev["stop_reason"]["type"] == "end_turn":
                            if len(stamps) != calls + 1:
                                raise RuntimeError(f"expected {calls} tool calls, saw {len(stamps) - 1}")
                            return [(b - a) * 1000 for a, b in itertools.pairwise(stamps)]
                        elif ev["type"] == "session.error":
                            raise RuntimeError(f"session error: {ev['error']}")
        finally:
            sse_w.close()
            post_w.close()

    async def _answer(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session_id: str, tool_use_id: str
    ) -> None:
        result = {"type": "user.tool_result", "tool_use_id": tool_use_id, "content": []}
        body = json.dumps({"events": [result]}).encode()
        writer.write(
            f"POST /v1/sessions/{session_id}/events HTTP/1.1\r\n{self.headers}"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        reply = await reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"posting a result: {status} {reply[:200]!r}")


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="inwall-bench-"))
    print(f"data: {root}", file=sys.stderr)
    server = ServerProcess(root / "data", args=("--log-level", "error"))
    await server.start()
    os.chmod(root, 0o711)  # the sandbox's unprivileged uid must reach the workspace
    workdir = root / "work"
    workdir.mkdir(mode=0o711)
    worker = None
    try:
        async with AsyncAnthropic(
            base_url=server.base_url, api_key=server.admin_key, max_retries=0, timeout=120
        ) as client:
            env = await client.beta.environments.create(name="bench", config={"type": "self_hosted"})
            agent = await client.beta.agents.create(
                name="bench", model="inwall-scripted", tools=[{"type": "agent_toolset_20260401"}]
            )
            key: Any = await client.post(f"/v1/inwall/environments/{env.id}/keys", cast_to=object, body={})
            if args.worker == "inline":
                inline = InlineWorker(server.base_url, key["key"])
                session_of = inline.session
            else:
                worker = start_worker(
                    args.worker, server.base_url, env.id, key["key"], workdir, args.sessions + 4
                )
                session_of = one_session

            with anyio.fail_after(60):
                await session_of(client, agent.id, env.id, 5)  # warm-up: worker attached, shell started
            (root / "local").mkdir()
            local = await local_baseline(args.calls, root / "local")
            trips: list[float] = []
            per = max(
                1, min(args.calls, 20)
            )  # turns of 20 calls: a long transcript is the model's cost, not ours
            for _ in range(max(1, args.calls // per)):
                trips += await session_of(client, agent.id, env.id, per)
            local_med, trip_med = statistics.median(local), statistics.median(trips)
            print(
                f"== no-op built-in tool call, {len(trips)} sequential calls in turns of {per}, "
                f"worker={args.worker}"
            )
            print(
                f"local (same tool, in-process)    median {local_med:7.2f} ms   p90 {pct(local, 0.9):7.2f} ms"
            )
            print(
                f"round trip via control plane     median {trip_med:7.2f} ms   p90 {pct(trips, 0.9):7.2f} ms"
            )
            print(
                f"control plane adds               median {trip_med - local_med:7.2f} ms   (target <= 5 ms)"
            )
            print(f"ratio round trip / local         {trip_med / local_med:7.1f}x")

            if args.sessions:
                errors = 0
                latencies: list[float] = []

                async def run(i: int) -> None:
                    nonlocal errors
                    try:
                        latencies.extend(await session_of(client, agent.id, env.id, args.per_session))
                    except Exception as exc:  # counted, reported
                        errors += 1
                        print(f"  session {i} failed: {exc!r}")

                t = time.perf_counter()
                with anyio.fail_after(600):
                    async with anyio.create_task_group() as tg:
                        for i in range(args.sessions):
                            tg.start_soon(run, i)
                elapsed = time.perf_counter() - t
                total = args.sessions * args.per_session
                print(
                    f"== {args.sessions} concurrent sessions x {args.per_session} tool calls, "
                    f"worker={args.worker}"
                )
                print(
                    f"errors {errors}   wall {elapsed:.2f} s   throughput {total / elapsed:.1f} tool calls/s"
                )
                if latencies:
                    print(
                        f"per-call latency median {statistics.median(latencies):.2f} ms   "
                        f"p99 {pct(latencies, 0.99):.2f} ms"
                    )
    finally:
        if worker is not None:
            stop(worker)
        server.terminate()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--worker", choices=["stock", "inwall", "inline"], default="inwall")
    anyio.run(main, parser.parse_args())
