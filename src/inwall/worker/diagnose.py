"""Typed sandbox violations inferred from a tool call's outcome inside the resident shell.

The sandbox's own diagnosis (``Sandbox.run``) sees one command's stderr and
exit status. The worker's bash is long-lived, so the same inference runs per
call on what the call printed (stderr is merged into it, as the SDK does) and
the status ``$?`` reported. Egress denials need no inference: the proxy
reports them as they happen.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

from inwall.sandbox.violations import FilesystemDenied, LimitExceeded, SyscallDenied, Violation, from_stderr

if TYPE_CHECKING:
    from inwall.sandbox import SandboxSettings

__all__ = ["diagnose_bash", "diagnose_denied"]


def diagnose_bash(settings: SandboxSettings, *, exit_code: int, output: str, command: str) -> list[Violation]:
    lim = settings.limits
    out: list[Violation] = []
    tail = output[-8192:].encode("utf-8", "replace")
    # the call's own status, or bash's report of a child the signal killed earlier in the call
    if exit_code == 128 + signal.SIGXCPU or b"CPU time limit exceeded" in tail:
        out.append(LimitExceeded(limit="cpu_s", value=lim.cpu_s, detail="CPU time limit"))
    if exit_code == 128 + signal.SIGXFSZ or b"File size limit exceeded" in tail:
        out.append(LimitExceeded(limit="disk_mb", value=lim.disk_mb, detail="file size limit"))
    if exit_code == 128 + signal.SIGSYS or b"Bad system call" in tail:
        out.append(SyscallDenied(detail="killed by seccomp"))
    if lim.memory_mb is not None and (
        b"MemoryError" in tail or b"Cannot allocate memory" in tail or b"out of memory" in tail.lower()
    ):
        out.append(LimitExceeded(limit="memory_mb", value=lim.memory_mb, detail="allocation refused"))
    if lim.pids is not None and (
        b"fork: Resource temporarily unavailable" in tail
        or b"Cannot fork" in tail
        or b"fork: retry" in tail
        or b"can't start new thread" in tail
    ):
        out.append(LimitExceeded(limit="pids", value=lim.pids, detail="process limit reached"))
    if lim.open_files is not None and b"Too many open files" in tail:
        out.append(LimitExceeded(limit="open_files", value=lim.open_files, detail="open file limit"))
    out.extend(from_stderr(tail, ignore=settings.ignore_violations, command=command[:200]))
    return out


def diagnose_denied(meta: dict[str, Any]) -> list[Violation]:
    """A file tool's refusal by the sandbox (read-only mount, permission), reported by the shim."""
    denied = meta.get("denied")
    if not isinstance(denied, dict):
        return []
    return [
        FilesystemDenied(
            path=str(denied.get("path", "?")),
            op=str(denied.get("op", "access")),
            detail=str(denied.get("detail", "")),
        )
    ]
