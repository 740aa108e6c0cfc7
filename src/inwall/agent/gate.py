"""Tool governance in the turn loop: who the session acts for, which tools it sees, which calls it may make.

The caller is the user whose key created the session, or the end user whose
OIDC token was presented at creation; the admin key acts as ``admin``.
Policies (Cedar, ``inwall server --policy``) decide twice: which tools the
model is offered at all, and whether each call — with its arguments — may
run. A denied call tells the model only that it was denied; a tool the caller
may never use is simply absent, so its existence is not disclosed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from inwall.agent.catalog import Catalog, CatalogTool
from inwall.governance import Identity, PolicyEngine, ToolRef
from inwall.governance.policy import DENIAL_TEXT
from inwall.store import schema as s
from inwall.store.db import Database

__all__ = ["DENIAL_TEXT", "PolicyGate"]

log = logging.getLogger("inwall.governance")

ADMIN = Identity(user_id="admin", kind="admin", roles=("admin",), name="admin")


class PolicyGate:
    def __init__(
        self,
        db: Database,
        engine: Callable[[], PolicyEngine],
        *,
        tunnel_of: Callable[[str], str] = lambda url: "",
    ) -> None:
        self._db = db
        self._engine = engine
        self._tunnel_of = tunnel_of

    async def identity(self, session: Mapping[str, Any]) -> Identity:
        acting = (session.get("body") or {}).get("acting_for")
        if acting:
            return Identity(
                user_id=str(acting["user_id"]),
                kind=str(acting.get("kind", "end_user")),
                roles=tuple(acting.get("roles") or ()),
                name=str(acting.get("name") or ""),
                claims=dict(acting.get("claims") or {}),
            )
        owner = session.get("owner_user_id")
        if not owner:
            return ADMIN
        async with self._db.read() as conn:
            row = (await conn.execute(sa.select(s.users).where(s.users.c.id == owner))).mappings().first()
        if row is None:
            return Identity(user_id=str(owner), kind="user", roles=())
        return Identity(user_id=row["id"], kind="user", roles=tuple(row["roles"] or ()), name=row["name"])

    def ref(self, tool: CatalogTool, session: Mapping[str, Any]) -> ToolRef:
        tunnel = ""
        if tool.mcp_server:
            for definition in (session.get("body") or {}).get("agent", {}).get("mcp_servers", []):
                if definition.get("name") == tool.mcp_server:
                    tunnel = self._tunnel_of(str(definition.get("url", "")))
        return ToolRef(name=tool.model_name, kind=tool.kind, mcp_server=tool.mcp_server or "", tunnel=tunnel)

    def visible(self, identity: Identity, session: Mapping[str, Any], catalog: Catalog) -> Catalog:
        refs = {tool.model_name: self.ref(tool, session) for tool in catalog.tools}
        allowed = {r.name for r in self._engine().visible(identity, list(refs.values()))}
        return catalog.without(set(refs) - allowed)

    def check(
        self, identity: Identity, session: Mapping[str, Any], tool: CatalogTool, arguments: Mapping[str, Any]
    ) -> tuple[bool, str]:
        decision = self._engine().decide(
            identity,
            self.ref(tool, session),
            arguments,
            session_id=str(session.get("id", "")),
            environment_id=str(session.get("environment_id", "")),
        )
        why = ", ".join(decision.reasons) or ("allowed" if decision.allowed else "no policy permits it")
        if decision.errors:
            why += f" (errors: {'; '.join(decision.errors)})"
        return decision.allowed, why
