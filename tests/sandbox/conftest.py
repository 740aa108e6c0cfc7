"""Fixtures for the sandbox suite: real bubblewrap, real workspaces owned by the sandbox uid."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from inwall.sandbox.probe import check_host
from inwall.sandbox.runner import prepare_workdir


def _host_problems() -> tuple[str, ...]:
    return check_host(deep=True).problems


@pytest.fixture(scope="session")
def sandbox_host() -> None:
    problems = _host_problems()
    if problems:
        pytest.skip("host cannot sandbox: " + "; ".join(problems))


@pytest.fixture
def ws_root(sandbox_host: None) -> Iterator[Path]:
    """A 0711 directory outside pytest's 0700 tmp tree, so the sandbox uid can reach workspaces in it.

    Not under /tmp: the sandbox has a private /tmp, and several tests need host
    paths that are visible (read-only) inside it.
    """
    base = "/var/tmp" if os.geteuid() != 0 else "/srv"
    os.makedirs(base, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="inwall-sbtest-", dir=base))
    root.chmod(0o711)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def workspace(ws_root: Path) -> Path:
    return prepare_workdir(ws_root / "ws")
