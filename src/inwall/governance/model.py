"""Who is calling and which tool: the two facts every governance decision is about.

They live apart from the Cedar code because the perimeter needs them too:
the identity token carries an :class:`Identity`, and the worker and gateway
rebuild one from a verified token to run their own policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inwall.errors import InvalidInput

__all__ = ["IDENTITY_KINDS", "TOOL_KINDS", "Identity", "ToolRef"]

IDENTITY_KINDS = frozenset({"user", "end_user", "admin", "anonymous"})
TOOL_KINDS = frozenset({"builtin", "custom", "mcp"})


@dataclass(frozen=True)
class Identity:
    """A caller: an inwall user (API key), an end user (OIDC) or an admin.

    ``claims`` are the caller's token claims (JSON values); policies read them
    as ``principal.claims``. They are excluded from hashing so an Identity can
    key a cache even though a mapping is not hashable.
    """

    user_id: str
    kind: str
    roles: tuple[str, ...]
    name: str = ""
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise InvalidInput("Identity.user_id must be a non-empty string")
        if self.kind not in IDENTITY_KINDS:
            raise InvalidInput(f"Identity.kind must be one of {sorted(IDENTITY_KINDS)}, not {self.kind!r}")
        roles = tuple(self.roles)
        if not all(isinstance(r, str) and r for r in roles):
            raise InvalidInput("Identity.roles must be non-empty strings")
        object.__setattr__(self, "roles", roles)


@dataclass(frozen=True)
class ToolRef:
    """A tool as the model sees it (``mcp__jira__search``, ``bash``), with where it runs."""

    name: str
    kind: str
    mcp_server: str = ""
    tunnel: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput("ToolRef.name must be a non-empty string")
        if self.kind not in TOOL_KINDS:
            raise InvalidInput(f"ToolRef.kind must be one of {sorted(TOOL_KINDS)}, not {self.kind!r}")
