"""The OS sandbox: bubblewrap + seccomp + limits + an allowlisting egress proxy.

Public names are imported lazily (PEP 562) so that ``inwall sandbox exec``
loads only what one command needs; start-up time is part of every sandboxed
command's cost.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from inwall.sandbox.access import sandbox_python
    from inwall.sandbox.policy import FilesystemPolicy, Limits, NetworkPolicy, SandboxSettings
    from inwall.sandbox.probe import HostReport, check_host
    from inwall.sandbox.runner import RunResult, Sandbox, SandboxProcess, prepare_workdir, sandbox_identity
    from inwall.sandbox.violations import (
        EgressDenied,
        FilesystemDenied,
        LimitExceeded,
        SyscallDenied,
        Violation,
        render_violations,
    )

__all__ = [
    "EgressDenied",
    "FilesystemDenied",
    "FilesystemPolicy",
    "HostReport",
    "LimitExceeded",
    "Limits",
    "NetworkPolicy",
    "RunResult",
    "Sandbox",
    "SandboxProcess",
    "SandboxSettings",
    "SyscallDenied",
    "Violation",
    "check_host",
    "prepare_workdir",
    "render_violations",
    "sandbox_identity",
    "sandbox_python",
]

_WHERE = {
    "FilesystemPolicy": "policy",
    "Limits": "policy",
    "NetworkPolicy": "policy",
    "SandboxSettings": "policy",
    "HostReport": "probe",
    "check_host": "probe",
    "RunResult": "runner",
    "Sandbox": "runner",
    "SandboxProcess": "runner",
    "prepare_workdir": "runner",
    "sandbox_identity": "runner",
    "EgressDenied": "violations",
    "FilesystemDenied": "violations",
    "LimitExceeded": "violations",
    "SyscallDenied": "violations",
    "Violation": "violations",
    "render_violations": "violations",
    "sandbox_python": "access",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'inwall.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inwall.sandbox.{mod}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
