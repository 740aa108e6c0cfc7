"""The worker's own say over each tool call: who is calling, may they, and what leaves.

The control plane decides every call first, with its policy. The worker
decides again, on its own configuration, so the perimeter's rules hold even
if the control plane is misconfigured or compromised (issue 6, parts 3 and 4):

1. **Identity.** Before a call runs, the worker fetches the identity token
   of the session's pending call (:mod:`inwall.worker.identity`) and
   verifies it with the control plane's public key, pinned in the worker's
   configuration (``--identity-public-key``) and never fetched at run time:
   a key taken from the party being checked proves nothing. The token must
   name this environment (audience ``inwall-worker:<environment id>``), this
   session, this tool and this very input (``input_sha256``), be unexpired,
   and be new (its ``jti`` is the tool_use id, so each call is admitted once
   per worker process).
2. **Policy.** The worker's Cedar policy (``--policy``, re-read when the file
   changes; an edit that does not parse keeps the policy in force) decides
   the call for the verified identity, on the tool
   ``Inwall::Tool::"<name>"`` of kind ``builtin`` and the call's input.
3. **Redaction.** Results are redacted (``--redact``, ``--redact-pattern``)
   before the SDK posts them; the audit record counts what was replaced,
   never the values.

A refused call does not run. The model reads only
:data:`~inwall.governance.DENIAL_TEXT`, followed by ``(identity check
failed)`` when the identity was the reason — which names no policy and no
other tool. The audit record says why: the verifier's reason code
(``expired``, ``replayed`` ...) or the ids of the deciding policies. Tokens
are never logged or recorded.

**Anonymous calls.** Which calls run without a verified identity:

- no ``--identity-public-key``: every call (no token is fetched);
- a key without ``--require-identity``: a token the control plane offers
  must verify (a bad one refuses the call), but a call with no token on
  offer — a control plane that mints none, such as Anthropic's hosted one,
  or one that cannot be reached — runs as anonymous. Use
  ``--require-identity`` when the control plane is inwall's: a compromised
  control plane could otherwise withhold tokens to be treated as anonymous;
- ``--require-identity``: none; no valid token, no call.

An anonymous call is decided by the policy as the principal
``Inwall::User::"anonymous"`` with ``principal.kind == "anonymous"``, no
roles, no name and no claims (the gateway's convention): a ``forbid`` that
applies to everyone still applies, a ``permit`` that needs a role or a
claim never matches, and a policy can single anonymous calls out with
``principal.kind == "anonymous"``. With no policy, an anonymous call is
allowed, as a control plane without ``--policy`` allows everything.

The control plane's offload ``write`` (a large result saved to the
workspace) is a tool call like any other here: a perimeter policy that
forbids ``write`` for a user also keeps their large results from being
offloaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from inwall.errors import ConfigError, InvalidInput
from inwall.governance import (
    DENIAL_TEXT,
    Identity,
    IdentityError,
    IdentityKeys,
    IdentityVerifier,
    PolicyEngine,
    PolicyFile,
    Redactor,
    ToolRef,
    input_digest,
)

if TYPE_CHECKING:
    from inwall.worker.config import WorkerConfig

__all__ = [
    "ANONYMOUS",
    "IDENTITY_DENIAL_TEXT",
    "Admission",
    "Perimeter",
    "worker_audience",
]

log = logging.getLogger("inwall.worker")

ANONYMOUS_ID: Final = "anonymous"
ANONYMOUS_KIND: Final = "anonymous"
IDENTITY_DENIAL_TEXT: Final = f"{DENIAL_TEXT} (identity check failed)"
"""What the model reads when the identity did not check out: the category, nothing more."""


@dataclass(frozen=True)
class _Anonymous(Identity):
    """The principal of a call without a verified identity.

    :class:`Identity` admits only the kinds the control plane mints; this
    one no token can claim, so the subclass skips that check.
    """

    def __post_init__(self) -> None:
        pass


ANONYMOUS: Final[Identity] = _Anonymous(user_id=ANONYMOUS_ID, kind=ANONYMOUS_KIND, roles=())


def worker_audience(environment_id: str) -> str:
    """The audience the control plane mints worker tokens for."""
    return f"inwall-worker:{environment_id}"


@dataclass(frozen=True)
class Admission:
    """The perimeter's answer for one call, and what the audit record says about it."""

    allowed: bool
    identity: Identity
    #: "verified", "anonymous" or "refused"
    identity_status: str
    #: why the identity is anonymous or refused: a verifier reason code, "absent", "unavailable"
    identity_reason: str = ""
    #: "identity" or "policy" when refused
    denied_by: str = ""
    policies: tuple[str, ...] = ()
    policy_errors: tuple[str, ...] = ()
    tool_use_id: str = ""
    model_text: str = ""

    def audit_fields(self) -> dict[str, Any]:
        """The ``perimeter`` field of the call's audit record (never the token)."""
        fields: dict[str, Any] = {
            "decision": "allowed" if self.allowed else "denied",
            "identity": self.identity_status,
            "caller": self.identity.user_id,
            "caller_kind": self.identity.kind,
            "roles": list(self.identity.roles),
        }
        optional = {
            "identity_reason": self.identity_reason,
            "denied_by": self.denied_by,
            "policies": list(self.policies),
            "policy_errors": list(self.policy_errors),
            "tool_use_id": self.tool_use_id,
        }
        fields.update({k: v for k, v in optional.items() if v})
        return fields


@dataclass
class Perimeter:
    """Identity, policy and redaction for one worker; shared by its sessions (one replay memory)."""

    environment_id: str
    verifier: IdentityVerifier | None = None
    require_identity: bool = False
    policy: PolicyFile | PolicyEngine | None = None
    redactor: Redactor | None = None

    def __post_init__(self) -> None:
        if self.require_identity and self.verifier is None:
            raise ConfigError(
                "--require-identity needs --identity-public-key (the control plane's public key)"
            )

    @classmethod
    def for_worker(
        cls,
        config: WorkerConfig,
        *,
        on_policy_error: Callable[[str], None] | None = None,
        on_policy_reload: Callable[[PolicyEngine], None] | None = None,
    ) -> Perimeter | None:
        """The perimeter a worker's flags ask for, so callers cannot forget one of them."""
        return cls.load(
            environment_id=config.environment_id,
            identity_public_key=config.identity_public_key,
            require_identity=config.require_identity,
            policy=config.policy,
            redact=config.redact,
            redact_patterns=config.redact_patterns,
            on_policy_error=on_policy_error,
            on_policy_reload=on_policy_reload,
        )

    @classmethod
    def load(
        cls,
        *,
        environment_id: str,
        identity_public_key: Path | None = None,
        require_identity: bool = False,
        policy: Path | None = None,
        redact: Sequence[str] = (),
        redact_patterns: Sequence[str] = (),
        on_policy_error: Callable[[str], None] | None = None,
        on_policy_reload: Callable[[PolicyEngine], None] | None = None,
    ) -> Perimeter | None:
        """From the worker's flags; None when none is set. Raises ConfigError (a bad key, policy or regex)."""
        if require_identity and identity_public_key is None:
            raise ConfigError(
                "--require-identity needs --identity-public-key (the control plane's public key)"
            )
        if identity_public_key is None and policy is None and not redact and not redact_patterns:
            return None
        verifier = None
        if identity_public_key is not None:
            key = IdentityKeys.load_public(identity_public_key)
            verifier = IdentityVerifier(key, audience=worker_audience(environment_id))
        policy_file = None
        if policy is not None:
            policy_file = PolicyFile(policy, on_error=on_policy_error, on_reload=on_policy_reload)
        redactor = None
        if redact or redact_patterns:
            try:
                redactor = Redactor(tuple(redact), tuple(redact_patterns))
            except ConfigError as exc:
                raise ConfigError(f"--redact / --redact-pattern: {exc.message}") from exc
        return cls(
            environment_id=environment_id,
            verifier=verifier,
            require_identity=require_identity,
            policy=policy_file,
            redactor=redactor,
        )

    # -- what is configured

    @property
    def wants_token(self) -> bool:
        return self.verifier is not None

    @property
    def checks_calls(self) -> bool:
        return self.verifier is not None or self.policy is not None

    def engine(self) -> PolicyEngine | None:
        """The policy in force, after a cheap check for an edited file."""
        if isinstance(self.policy, PolicyFile):
            self.policy.maybe_reload()
            return self.policy.engine
        return self.policy

    def describe(self) -> dict[str, Any]:
        """For the startup log line and the ``worker_started`` audit record."""
        if self.verifier is None:
            identity = "off (every call anonymous)"
        elif self.require_identity:
            identity = "required"
        else:
            identity = "verified when offered (anonymous otherwise)"
        engine = self.engine()
        return {
            "identity": identity,
            "policy": engine.describe() if engine is not None else "none",
            "redact": list(self.redactor.names) if self.redactor is not None else [],
        }

    # -- deciding

    def admit(
        self,
        tool: str,
        input: Mapping[str, Any],
        *,
        session_id: str,
        token: str | None,
        token_problem: str = "",
        input_sha256: str | None = None,
    ) -> Admission:
        """Decide one call. ``token`` is None when none was on offer (``token_problem`` says why).

        ``input_sha256`` is :func:`~inwall.governance.input_digest` of ``input``
        when the caller has it already (hashing a megabyte-sized write twice
        costs milliseconds). The two steps, :meth:`check_identity` and
        :meth:`decide`, are public so that a caller can run the second on a
        thread.
        """
        admission = self.check_identity(
            tool,
            input,
            session_id=session_id,
            token=token,
            token_problem=token_problem,
            input_sha256=input_sha256,
        )
        if not admission.allowed:
            return admission
        return self.decide(admission, self.engine(), tool, input, session_id=session_id)

    def check_identity(
        self,
        tool: str,
        input: Mapping[str, Any],
        *,
        session_id: str,
        token: str | None,
        token_problem: str = "",
        input_sha256: str | None = None,
    ) -> Admission:
        """The first step of :meth:`admit`: who is calling. Allowed unless the identity was refused."""
        if self.verifier is None:
            return Admission(True, ANONYMOUS, "anonymous")
        if token is None:
            reason = token_problem or "absent"
            if self.require_identity:
                return self._refused(reason)
            return Admission(True, ANONYMOUS, "anonymous", reason)
        try:
            digest = input_sha256 if input_sha256 is not None else input_digest(input)
            verified = self.verifier.verify(token, tool=tool, input_sha256=digest)
        except IdentityError as exc:
            return self._refused(exc.reason)
        except InvalidInput:
            return self._refused("malformed_input")
        if verified.session_id != session_id:
            return self._refused("wrong_session")
        return Admission(True, verified.identity, "verified", tool_use_id=verified.tool_use_id)

    def decide(
        self,
        admission: Admission,
        engine: PolicyEngine | None,
        tool: str,
        input: Mapping[str, Any],
        *,
        session_id: str,
    ) -> Admission:
        """The second step: ``engine``'s decision for the identity ``admission`` established.

        Safe on a worker thread — Cedar takes milliseconds over a megabyte of
        input — as long as ``engine`` comes from :meth:`engine`, called on the
        event loop: a policy reload and its callbacks (which write audit
        records) belong there.
        """
        if engine is None:
            return admission
        decision = engine.decide(
            admission.identity,
            ToolRef(name=tool, kind="builtin"),
            input,
            session_id=session_id,
            environment_id=self.environment_id,
        )
        return replace(
            admission,
            allowed=decision.allowed,
            denied_by="" if decision.allowed else "policy",
            policies=decision.reasons,
            policy_errors=decision.errors,
            model_text="" if decision.allowed else DENIAL_TEXT,
        )

    @staticmethod
    def _refused(reason: str) -> Admission:
        return Admission(
            False,
            ANONYMOUS,
            "refused",
            reason,
            denied_by="identity",
            model_text=IDENTITY_DENIAL_TEXT,
        )

    # -- redacting

    def redact(self, content: Any) -> tuple[Any, dict[str, int]]:
        """Text and text blocks redacted; images and other binary blocks untouched."""
        if self.redactor is None:
            return content, {}
        if isinstance(content, str):
            return self.redactor.redact_text(content)
        if isinstance(content, list) and all(isinstance(b, Mapping) for b in content):
            return self.redactor.redact_blocks(content)
        return content, {}
