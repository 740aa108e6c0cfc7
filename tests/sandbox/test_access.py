"""What the sandbox uid can reach: the one check the sandbox and the worker's shim both use."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from inwall.sandbox import SandboxSettings, sandbox_identity, sandbox_python
from inwall.sandbox.access import unsearchable_ancestor


def test_the_interpreter_found_runs_as_the_sandbox_uid() -> None:
    uid, gid = sandbox_identity(SandboxSettings.default())
    python = sandbox_python(uid, gid)
    assert os.path.isabs(python) and python == os.path.realpath(python)
    root = os.geteuid() == 0
    out = subprocess.run(
        [python, "-I", "-S", "-c", "import os; print(os.getuid())"],
        capture_output=True,
        text=True,
        check=True,
        user=uid if root else None,
        group=gid if root else None,
        extra_groups=[] if root else None,
    )
    assert out.stdout.strip() == str(uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another uid than the caller's")
def test_a_private_directory_is_named_as_the_block() -> None:
    uid, gid = sandbox_identity(SandboxSettings.default())
    os.makedirs("/srv", exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="inwall-access-", dir="/srv"))
    try:
        root.chmod(0o711)
        inner = root / "private" / "inner"
        inner.mkdir(parents=True)
        (root / "private").chmod(0o700)
        assert unsearchable_ancestor(str(inner), uid, gid) == str(root / "private")
        (root / "private").chmod(0o711)  # positive control: searchable, not listable
        assert unsearchable_ancestor(str(inner), uid, gid) is None
    finally:
        shutil.rmtree(root, ignore_errors=True)
