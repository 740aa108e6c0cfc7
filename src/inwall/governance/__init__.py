"""Tool governance: who may call which tool, decided in the control plane and again in the perimeter.

- :mod:`~inwall.governance.policy`: Cedar policies (sans-I/O) — :class:`PolicySet`,
  :class:`PolicyEngine`, :class:`Decision`; the schema is ``schema.cedarschema``.
- :mod:`~inwall.governance.reload`: :class:`PolicyFile`, a hot-reloaded policy file.
- :mod:`~inwall.governance.identity`: signed caller-identity tokens (Ed25519 JWT)
  minted by the control plane and verified by the worker and gateway.
- :mod:`~inwall.governance.oidc`: end users from an OIDC provider's ID tokens.
- :mod:`~inwall.governance.redact`: redaction of secrets from tool results.
"""

from inwall.governance.errors import IdentityError, PolicyError, PolicyProblem
from inwall.governance.identity import (
    IdentityIssuer,
    IdentityKeys,
    IdentityVerifier,
    VerifiedIdentity,
    identity_from_payload,
    input_digest,
)
from inwall.governance.model import Identity, ToolRef
from inwall.governance.oidc import OidcValidator
from inwall.governance.policy import DENIAL_TEXT, Decision, PolicyEngine, PolicyInfo, PolicySet
from inwall.governance.redact import Redactor
from inwall.governance.reload import PolicyFile

__all__ = [
    "DENIAL_TEXT",
    "Decision",
    "Identity",
    "IdentityError",
    "IdentityIssuer",
    "IdentityKeys",
    "IdentityVerifier",
    "OidcValidator",
    "PolicyEngine",
    "PolicyError",
    "PolicyFile",
    "PolicyInfo",
    "PolicyProblem",
    "PolicySet",
    "Redactor",
    "ToolRef",
    "VerifiedIdentity",
    "identity_from_payload",
    "input_digest",
]
