"""Public modules list their public names, and every listed name exists."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "inwall.worker",
    "inwall.worker.config",
    "inwall.worker.diagnose",
    "inwall.worker.identity",
    "inwall.worker.perimeter",
    "inwall.worker.program",
    "inwall.worker.protocol",
    "inwall.worker.recorder",
    "inwall.worker.runtime",
    "inwall.worker.shim",
    "inwall.worker.snapshots",
    "inwall.worker.tools",
    "inwall.cli.worker",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    mod = importlib.import_module(name)
    assert len(set(mod.__all__)) == len(mod.__all__)
    for attr in mod.__all__:
        assert getattr(mod, attr) is not None, f"{name}.{attr}"


def test_package_entry_points() -> None:
    import inwall.worker as w

    assert callable(w.run_worker) and callable(w.main)
    assert set(dir(w)) == set(w.__all__)
