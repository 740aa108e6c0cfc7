"""The environment worker: the SDK's ``EnvironmentWorker`` with every tool sandboxed, plus snapshots
and the perimeter's own governance (identity tokens, a Cedar policy, redaction).

Public names are imported lazily so that ``import inwall.worker`` stays cheap.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from inwall.worker.config import WorkerConfig
    from inwall.worker.identity import ControlPlaneIdentity, IdentitySource, StaticIdentity
    from inwall.worker.perimeter import Admission, Perimeter
    from inwall.worker.program import Worker, main, run_worker
    from inwall.worker.runtime import RuntimeOptions, SessionRuntime, ToolOutcome
    from inwall.worker.snapshots import DirectoryStore, SnapshotStore, WorkspaceSnapshots, collect_garbage
    from inwall.worker.tools import sandboxed_toolset

__all__ = [
    "Admission",
    "ControlPlaneIdentity",
    "DirectoryStore",
    "IdentitySource",
    "Perimeter",
    "RuntimeOptions",
    "SessionRuntime",
    "SnapshotStore",
    "StaticIdentity",
    "ToolOutcome",
    "Worker",
    "WorkerConfig",
    "WorkspaceSnapshots",
    "collect_garbage",
    "main",
    "run_worker",
    "sandboxed_toolset",
]

_WHERE = {
    "WorkerConfig": "config",
    "ControlPlaneIdentity": "identity",
    "IdentitySource": "identity",
    "StaticIdentity": "identity",
    "Admission": "perimeter",
    "Perimeter": "perimeter",
    "Worker": "program",
    "main": "program",
    "run_worker": "program",
    "RuntimeOptions": "runtime",
    "SessionRuntime": "runtime",
    "ToolOutcome": "runtime",
    "DirectoryStore": "snapshots",
    "SnapshotStore": "snapshots",
    "WorkspaceSnapshots": "snapshots",
    "collect_garbage": "snapshots",
    "sandboxed_toolset": "tools",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'inwall.worker' has no attribute {name!r}")
    return getattr(importlib.import_module(f"inwall.worker.{mod}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
