"""Public governance modules list ``__all__``, and every listed name exists."""

from __future__ import annotations

import importlib

import pytest

MODULES = [
    "inwall.governance",
    "inwall.governance.errors",
    "inwall.governance.identity",
    "inwall.governance.model",
    "inwall.governance.oidc",
    "inwall.governance.policy",
    "inwall.governance.redact",
    "inwall.governance.reload",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_complete(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__all__, name
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_policy_core_is_sans_io() -> None:
    """The evaluator imports no event loop, socket or HTTP client."""
    import ast
    from pathlib import Path

    import inwall.governance as pkg

    root = Path(pkg.__file__).parent
    forbidden = {"asyncio", "anyio", "socket", "httpx", "httpx2", "websockets"}
    for name in ("policy.py", "_cedar_values.py", "_policy_text.py", "model.py", "redact.py"):
        tree = ast.parse((root / name).read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not imported & forbidden, (name, imported & forbidden)
