"""The one exception tree of inwall, grouped by what the caller does next.

    InwallError
    ├── ConfigError            fix the configuration or the command line, then retry
    ├── InvalidInput           the request or tool input is wrong; report it, do not retry
    │   └── PayloadTooLarge
    ├── NotFound               the thing does not exist (or is not visible to this caller)
    ├── Conflict               the thing is in the wrong state for this operation
    │   └── PreconditionFailed an optimistic-concurrency check lost (a stale heartbeat)
    ├── AuthError              the credential is missing or wrong: 401
    │   └── PermissionDenied   the credential is right but may not do this: 403
    ├── Unavailable            a dependency is down or busy; retry later with backoff
    │   └── SandboxUnavailable the host cannot sandbox (no bubblewrap, no user namespaces)
    ├── ProtocolError          a peer or we broke a wire protocol
    │   ├── LocalProtocolError   our misuse (a bug here)
    │   └── RemoteProtocolError  the peer's misbehaviour (close that peer, nothing else)
    └── IntegrityError         tamper evidence: an audit chain does not verify

Foreign exceptions (sqlite3, httpx, OSError from bwrap) are translated at one
boundary with ``raise ... from exc`` so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "IntegrityError",
    "InvalidInput",
    "InwallError",
    "LocalProtocolError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PreconditionFailed",
    "ProtocolError",
    "RemoteProtocolError",
    "SandboxUnavailable",
    "Unavailable",
]


class InwallError(Exception):
    """Base of every error inwall raises on purpose.

    ``error_code`` and ``details`` travel to API clients in
    ``error.details`` (the SDK picks typed exception classes by the code).
    """

    def __init__(
        self, message: str, *, error_code: str | None = None, details: dict[str, object] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.details = details or {}


class ConfigError(InwallError):
    """A configuration file, flag or environment variable is wrong."""


class InvalidInput(InwallError):
    """A request body, query parameter or tool input is malformed."""


class PayloadTooLarge(InvalidInput):
    """A body or frame is over its configured limit."""


class NotFound(InwallError):
    """The object does not exist, or the caller may not know it exists."""


class Conflict(InwallError):
    """The object is in a state that does not allow this operation."""


class PreconditionFailed(Conflict):
    """An optimistic-concurrency precondition did not hold."""


class AuthError(InwallError):
    """No credential, or a credential that is not valid."""


class PermissionDenied(AuthError):
    """A valid credential that may not perform this operation."""


class Unavailable(InwallError):
    """A dependency is unreachable, overloaded or not ready; retry later."""


class SandboxUnavailable(Unavailable):
    """The host lacks what sandboxing needs; the message says what to install or enable."""


class ProtocolError(InwallError):
    """A wire protocol was violated."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids."""


class IntegrityError(InwallError):
    """Tamper evidence: a hash chain or signature does not verify."""
