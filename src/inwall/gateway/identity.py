"""Who is calling, as the control plane signed it: the perimeter's check of caller identity tokens.

The control plane puts an EdDSA JWT in every ``tools/call`` it sends through a
tunnel, at ``params._meta["inwall/identity"]``; it is bound to this tunnel
(audience ``inwall-gateway:<tunnel id>``), to the tool (``params.name``) and
to the arguments (:func:`inwall.governance.input_digest`), lives about a
minute and names the tool_use as its ``jti``, so it is good for one call.
The ``X-Inwall-Identity`` header is accepted as well (one message per
request; never together with the ``_meta`` token).

The gateway pins the control plane's public key from its own config and
never fetches it: a key fetched at run time is a key an attacker on the path
could swap. Tokens are stripped before anything is forwarded, so an MCP
server never sees one, and they never appear in logs, replies or audit
records — only the refusal reason (``expired``, ``replayed`` ...) does.

A ``tools/list`` may carry a token too; its ``tool`` claim must then be
``"tools/list"`` (:data:`LISTING_TOOL`) and the listing is filtered for that
caller. The control plane does not sign listings today, so an unsigned
listing is allowed even when ``required`` is set: listing is not calling,
and every call is still checked in full.

Sans-I/O: verification is CPU only (the key is read once, at start).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from inwall.governance import (
    IdentityError,
    IdentityKeys,
    IdentityVerifier,
    VerifiedIdentity,
    input_digest,
)

if TYPE_CHECKING:
    from inwall.gateway.config import IdentityConfig

__all__ = [
    "IDENTITY_HEADER",
    "IDENTITY_META_KEY",
    "LISTING_TOOL",
    "CallerIdentity",
]

IDENTITY_META_KEY: Final = "inwall/identity"
IDENTITY_HEADER: Final = "x-inwall-identity"
LISTING_TOOL: Final = "tools/list"


class CallerIdentity:
    """Verifies identity tokens for one gateway; one instance, so the replay memory is shared.

    ``verifier`` None: no ``[identity]`` table, so tokens are stripped and
    ignored and every caller is anonymous.
    """

    def __init__(self, verifier: IdentityVerifier | None, *, required: bool = False) -> None:
        if required and verifier is None:
            raise ValueError("required identity needs a verifier")
        self.verifier = verifier
        self.required = required

    @classmethod
    def from_config(cls, config: IdentityConfig | None) -> CallerIdentity:
        """Load the pinned key (ConfigError when it is missing or not Ed25519)."""
        if config is None:
            return cls(None)
        key = IdentityKeys.load_public(config.public_key_file)
        verifier = IdentityVerifier(key, audience=config.audience, leeway_s=config.leeway_s)
        return cls(verifier, required=config.required)

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    def verify_call(
        self, token: str | None, *, tool: str, arguments: Mapping[str, Any]
    ) -> VerifiedIdentity | None:
        """The caller of one tools/call, or None (anonymous). Raises IdentityError when refused."""
        if self.verifier is None:
            return None
        if token is None:
            if self.required:
                raise IdentityError(
                    "missing", "identity token refused: this gateway requires a signed caller identity"
                )
            return None
        return self.verifier.verify(token, tool=tool, input_sha256=input_digest(arguments))

    def verify_listing(self, token: str | None) -> VerifiedIdentity | None:
        """The caller a tools/list is filtered for, or None. Raises IdentityError when refused."""
        if self.verifier is None or token is None:
            return None
        return self.verifier.verify(token, tool=LISTING_TOOL)
