"""Governance errors, placed in inwall's one tree by what the caller does next.

    InwallError
    ├── ConfigError
    │   └── PolicyError      a policy file does not parse or validate: fix it
    └── AuthError
        └── IdentityError    an identity token is refused: 401, never retried as is

An identity provider that cannot be reached is not the caller's fault and is
raised as :class:`inwall.errors.Unavailable` instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from inwall.errors import AuthError, ConfigError

__all__ = ["IdentityError", "PolicyError", "PolicyProblem"]


@dataclass(frozen=True)
class PolicyProblem:
    """One thing wrong with a policy file; ``line`` is 1-based, 0 when Cedar gave no position."""

    line: int
    message: str
    policy_id: str = ""


class PolicyError(ConfigError):
    """A Cedar policy file was rejected; the message names ``source:line`` for each problem."""

    def __init__(self, source: str, problems: tuple[PolicyProblem, ...]) -> None:
        lines = [f"{source}:{p.line}: {p.message}" if p.line else f"{source}: {p.message}" for p in problems]
        super().__init__("\n".join(lines), error_code="policy_invalid")
        self.source = source
        self.problems = problems


class IdentityError(AuthError):
    """An identity token was refused.

    ``reason`` is a short stable code (``expired``, ``not_yet_valid``,
    ``wrong_audience``, ``wrong_issuer``, ``bad_signature``, ``bad_algorithm``,
    ``unknown_key``, ``replayed``, ``wrong_tool``, ``wrong_input``,
    ``malformed``, ``missing_claim``, ``lifetime_too_long``,
    ``replay_cache_full``) for audit records and metrics. Neither the reason
    nor the message ever contains the token.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, error_code="identity_refused", details={"reason": reason})
        self.reason = reason
