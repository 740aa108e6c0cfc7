"""The perimeter's own Cedar policy behind the :class:`~inwall.gateway.mcp_policy.Decider` seam.

The gateway evaluates the governance library's :class:`PolicyEngine` on the
identity the control plane signed, so the tunnel owner's rules hold even if
the control plane is misconfigured or compromised. What a perimeter policy
sees differs from the control plane's in one way that matters when writing
it: **tools are named by their upstream MCP name** (``lookup``, not
``mcp__crm__lookup``: the gateway never learns what the model calls a tool),
and **the route is the tool's ``mcp_server``**::

    resource == Inwall::Tool::"lookup"                 // the upstream tool name
    resource.kind == "mcp"                             // always, at the gateway
    resource.mcp_server == "crm"                       // the gateway route
    resource.tunnel == "tnl_..."                       // [identity] tunnel_id ("" without it)
    context.input                                      // the call's arguments
    context.session_id                                 // from the token ("" when anonymous)
    context.environment_id                             // always "" at the gateway

A call without a verified identity (no ``[identity]`` table, or a token
absent while ``required = false``) is evaluated as the **anonymous
principal** ``Inwall::User::"anonymous"`` with ``principal.kind ==
"anonymous"``, no roles, empty name and claims — so forbids that apply to
everyone still apply, and a policy can single anonymous calls out::

    forbid (principal, action, resource) when { principal.kind == "anonymous" };

Listings (``tools/list``) hide the tools the policy forbids regardless of
input (:meth:`PolicyEngine.visible`) for the identity the listing carries.
An unsigned listing — all the control plane sends today — is left unfiltered
by Cedar (``anonymous_listing = "unfiltered"``, the default), because
filtering it as the anonymous principal would hide every role-gated tool
from the very users allowed to call it; ``"filtered"`` filters it as the
anonymous principal, for gateways whose policy is about anonymous calls
only. Either way every call is decided in full.

A Cedar denial is opaque: the caller is told only
:data:`~inwall.governance.DENIAL_TEXT`, as the tool's error result; the
policy ids go to the audit log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from inwall.gateway.mcp_policy import Decider, Decision
from inwall.governance import Identity, IdentityError, PolicyEngine, ToolRef, identity_from_payload

__all__ = ["ANONYMOUS", "AllOf", "CedarDecider"]

ANONYMOUS_ID: Final = "anonymous"
ANONYMOUS_KIND: Final = "anonymous"


@dataclass(frozen=True)
class _Anonymous(Identity):
    """The principal of an unsigned call.

    :class:`Identity` admits only the kinds the control plane mints (user,
    end_user, admin); the gateway needs one more that no token can claim,
    so this subclass skips that one check. Cedar's schema types ``kind`` as
    a plain String, so policies can compare against it.
    """

    def __post_init__(self) -> None:
        pass


ANONYMOUS: Final[Identity] = _Anonymous(user_id=ANONYMOUS_ID, kind=ANONYMOUS_KIND, roles=())


class CedarDecider:
    """Decides with the current :class:`PolicyEngine` (``engine`` is called per decision: hot reload)."""

    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        *,
        tunnel_id: str = "",
        anonymous_listing: str = "unfiltered",
    ) -> None:
        if anonymous_listing not in ("unfiltered", "filtered"):
            raise ValueError(f"anonymous_listing must be unfiltered or filtered, not {anonymous_listing!r}")
        self._engine = engine
        self._tunnel = tunnel_id
        self._filter_anonymous = anonymous_listing == "filtered"

    def decide(
        self,
        route: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        identity_claims: Mapping[str, Any] | None,
    ) -> Decision:
        engine = self._engine()
        tool = ToolRef(name=tool_name, kind="mcp", mcp_server=route, tunnel=self._tunnel)
        try:
            principal = ANONYMOUS if identity_claims is None else identity_from_payload(identity_claims)
        except IdentityError:
            return Decision.deny(
                "the verified identity does not describe a caller", rule="cedar", opaque=True
            )
        if arguments is None:
            if identity_claims is None and not self._filter_anonymous:
                return Decision.allow("unsigned listing", rule="cedar_unfiltered")
            if engine.visible(principal, [tool]):
                return Decision.allow(rule="cedar")
            return Decision.deny("forbidden whatever the input", rule="cedar", opaque=True)
        session_id = identity_claims.get("session_id", "") if identity_claims is not None else ""
        decision = engine.decide(
            principal, tool, arguments, session_id=session_id if isinstance(session_id, str) else ""
        )
        detail = ", ".join(decision.reasons) if decision.reasons else "no permit applies"
        if decision.errors:
            detail += "; errors: " + "; ".join(decision.errors)
        if decision.allowed:
            return Decision.allow(f"policies: {detail}", rule="cedar")
        return Decision.deny(f"policies: {detail}" if decision.reasons else detail, rule="cedar", opaque=True)


class AllOf:
    """Every decider must allow; the first denial is the answer (the lists first, then Cedar)."""

    def __init__(self, *deciders: Decider) -> None:
        if not deciders:
            raise ValueError("AllOf needs at least one decider")
        self.deciders = deciders

    def decide(
        self,
        route: str,
        tool_name: str,
        arguments: Mapping[str, Any] | None,
        identity_claims: Mapping[str, Any] | None,
    ) -> Decision:
        rules: list[str] = []
        reasons: list[str] = []
        for decider in self.deciders:
            decision = decider.decide(route, tool_name, arguments, identity_claims)
            if not decision.allowed:
                return decision
            rules.append(decision.rule)
            if decision.reason:
                reasons.append(decision.reason)
        return Decision.allow("; ".join(reasons), rule="+".join(r for r in rules if r))
