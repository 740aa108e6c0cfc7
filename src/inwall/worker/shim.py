"""The anyio driver for the in-sandbox shim: starts it in a :class:`~inwall.sandbox.Sandbox`, calls ops.

One request at a time (the SDK's runner never overlaps calls on a session).
If the caller is cancelled while an op runs — the runner's 150 s tool
timeout, or the worker draining — the driver asks the shim to stop that op
and waits (shielded, bounded) for its reply, so the pipe never carries a
stale answer into the next call. A shim that does not answer in time is
marked broken and the session starts a fresh one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from inwall.errors import RemoteProtocolError, Unavailable
from inwall.sandbox.access import sandbox_python  # re-exported: inwall.worker.program uses it
from inwall.worker.protocol import Reply, ShimProtocol

if TYPE_CHECKING:
    from inwall.sandbox import Sandbox, SandboxProcess

__all__ = ["ShimClient", "ShimLost", "sandbox_python", "shim_argv", "shim_source"]

_STDERR_TAIL = 4096
_RECEIVE_BYTES = 1 << 20


class ShimLost(Unavailable):
    """The shim exited, was killed, or broke the protocol; the session needs a new one."""


def shim_source() -> str:
    """The shim program's text (passed with ``-c``: the sandbox uid may not be able to read the package)."""
    return (Path(__file__).with_name("_shim.py")).read_text(encoding="utf-8")


def shim_argv(python: str) -> list[str]:
    return [python, "-I", "-S", "-c", shim_source()]


class ShimClient:
    """Calls ops on one running shim."""

    def __init__(self, proc: SandboxProcess, *, cancel_grace_s: float = 5.0) -> None:
        self._proc = proc
        self._proto = ShimProtocol()
        self._lock = anyio.Lock()
        self._cancel_grace_s = cancel_grace_s
        self._stderr_tail = b""
        self._stderr_done = anyio.Event()
        self.lost: str | None = None

    @property
    def alive(self) -> bool:
        return self.lost is None

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", "replace").strip()

    async def pump_stderr(self) -> None:
        """Drain the shim's stderr (a full pipe would stall it), keeping the tail for error messages."""
        try:
            async for chunk in self._proc.stderr:
                self._stderr_tail = (self._stderr_tail + chunk)[-_STDERR_TAIL:]
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        finally:
            self._stderr_done.set()

    def _lose(self, why: str) -> ShimLost:
        self.lost = self.lost or why
        tail = self.stderr_tail()
        return ShimLost(f"the sandboxed tool process {why}" + (f": {tail}" if tail else ""))

    async def call(self, op: str, args: dict[str, Any]) -> Reply:
        """Run one op; raises :class:`ShimLost` if the shim dies first."""
        if self.lost is not None:
            raise self._lose(self.lost)
        async with self._lock:
            rid, line = self._proto.request(op, args)
            try:
                await self._proc.stdin.send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise self._lose("stopped taking requests") from exc
            try:
                return await self._wait(rid)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(self._cancel_grace_s) as scope:
                    try:
                        await self._proc.stdin.send(ShimProtocol.cancel(rid))
                        await self._wait(rid)
                    except (ShimLost, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                if scope.cancelled_caught:
                    self.lost = "did not stop a cancelled call in time"
                raise

    async def _wait(self, rid: int) -> Reply:
        while True:
            try:
                data = await self._proc.stdout.receive(_RECEIVE_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._proto.receive_eof()
                raise self._lose("exited") from exc
            try:
                replies = self._proto.receive_data(data)
            except RemoteProtocolError as exc:
                raise self._lose(f"broke the protocol ({exc.message})") from exc
            for reply in replies:
                if reply.id == rid:
                    return reply

    async def close(self, grace: float) -> None:
        """Close the shim's stdin (it kills its shell and exits), then terminate what is left.

        Both output pipes are read to their end before the process is let go: a
        pipe transport closes itself only at EOF, and ``SandboxProcess`` has no
        ``aclose`` that would close it otherwise.
        """
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self._proc.stdin.aclose()
            with anyio.move_on_after(grace):
                await self._proc.wait()
            if self._proc.returncode is None:
                await self._proc.terminate(grace)
            with anyio.move_on_after(grace + 2):
                with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    async for _ in self._proc.stdout:
                        pass
                await self._stderr_done.wait()
            await self._proc.terminate(grace)
            self.lost = self.lost or "was closed"


async def start_shim(sandbox: Sandbox, python: str, *, cancel_grace_s: float = 5.0) -> ShimClient:
    """Spawn the shim in ``sandbox`` (its cwd is the workspace)."""
    proc = await sandbox.spawn(shim_argv(python))
    return ShimClient(proc, cancel_grace_s=cancel_grace_s)
