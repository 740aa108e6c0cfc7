"""Every public egress module lists ``__all__``, and every listed name exists."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "inwall.sandbox.egress",
    "inwall.sandbox.egress.addresses",
    "inwall.sandbox.egress.rules",
    "inwall.sandbox.egress.http",
    "inwall.sandbox.egress.socks",
    "inwall.sandbox.egress.proxy",
    "inwall.sandbox.egress.bridge",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_package_import_is_lazy() -> None:
    code = "import sys, inwall.sandbox.egress; print(sorted({'anyio', 'idna'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
