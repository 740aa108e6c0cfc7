"""Sandbox egress: the allowlist, the host proxy and the in-sandbox bridge.

Exports resolve lazily: the bridge (``bridge.py``) runs inside the sandbox with
a bare ``python3 -I -S`` where neither anyio nor the rest of inwall may be
importable, so importing this package must cost nothing and need nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inwall.sandbox.egress.proxy import (
        EgressEvent,
        EgressProxy,
        ProxyStats,
        StaticResolver,
        SystemResolver,
    )
    from inwall.sandbox.egress.rules import Decision, NetworkRules, canonical_host

__all__ = [
    "Decision",
    "EgressEvent",
    "EgressProxy",
    "NetworkRules",
    "ProxyStats",
    "StaticResolver",
    "SystemResolver",
    "canonical_host",
]

_HOMES = {
    "Decision": "rules",
    "NetworkRules": "rules",
    "canonical_host": "rules",
    "EgressEvent": "proxy",
    "EgressProxy": "proxy",
    "ProxyStats": "proxy",
    "StaticResolver": "proxy",
    "SystemResolver": "proxy",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
