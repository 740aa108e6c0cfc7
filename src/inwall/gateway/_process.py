"""Start and stop a child in its own process group: close stdin, grace, SIGTERM, grace, SIGKILL, reap."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc

__all__ = ["child_environment", "spawn", "stop"]

_INHERITED = ("PATH", "HOME", "LANG")


def child_environment(extra: Mapping[str, str], parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """Only PATH, HOME and LANG pass from the gateway, plus the route's ``env``: never the tunnel token."""
    source = os.environ if parent is None else parent
    env = {k: source[k] for k in _INHERITED if k in source}
    env.update(extra)
    return env


async def spawn(command: Sequence[str], *, env: Mapping[str, str], cwd: Path | None) -> anyio.abc.Process:
    return await anyio.open_process(
        list(command),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def stop(process: anyio.abc.Process, *, grace_s: float) -> int | None:
    """Stop the child and everything in its group; shielded and bounded, so it runs even when cancelled."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(3 * grace_s + 5):
        if process.stdin is not None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await process.stdin.aclose()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                _signal_group(process.pid, sig)
            with anyio.move_on_after(grace_s if sig is not signal.SIGKILL else 5):
                await process.wait()
                break
        # stragglers the server left in its group (it is gone, so they would be orphans)
        _signal_group(process.pid, signal.SIGKILL)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                await stream.aclose()
    return process.returncode
