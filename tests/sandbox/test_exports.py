"""Public modules list ``__all__`` and every listed name exists."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "inwall.sandbox",
    "inwall.sandbox.policy",
    "inwall.sandbox.bwrap",
    "inwall.sandbox.seccomp",
    "inwall.sandbox.limits",
    "inwall.sandbox.runner",
    "inwall.sandbox.violations",
    "inwall.sandbox.probe",
    "inwall.sandbox.access",
    "inwall.cli.sandbox",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    mod = importlib.import_module(name)
    assert mod.__all__, name
    for attr in mod.__all__:
        assert getattr(mod, attr) is not None, f"{name}.{attr}"


def test_exec_path_avoids_heavy_imports() -> None:
    """The CLI path must not import dataclasses/typing/asyncio: start-up time is per command."""
    code = (
        "import sys\n"
        "import inwall.cli.sandbox, inwall.sandbox.runner, inwall.sandbox.bwrap, inwall.sandbox.seccomp\n"
        "import inwall.sandbox.probe, inwall.sandbox.policy, inwall.sandbox.access\n"
        "print(' '.join(m for m in ('dataclasses', 'typing', 'asyncio', 'anyio', 'pydantic', 'pathlib')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
