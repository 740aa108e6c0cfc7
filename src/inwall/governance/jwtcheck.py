"""One JWT check for both kinds of token inwall accepts: its own identity tokens and OIDC ID tokens.

PyJWT verifies the signature, audience, issuer and required claims; its
failures become refusals with a stable machine-readable reason. Times are
left to the caller, who checks them against an injectable clock with its own
skew (PyJWT would read the wall clock).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jwt

__all__ = ["decode_signed"]


def decode_signed(
    token: str,
    key: Any,
    *,
    algorithms: Sequence[str],
    audience: str | Iterable[str],
    issuer: str | Sequence[str],
    require: Sequence[str],
    refuse: Callable[[str, str], Exception],
) -> dict[str, Any]:
    """The token's verified claims, or ``refuse(reason, detail)`` raised from PyJWT's error."""
    try:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            audience=audience,
            issuer=issuer,
            options={"require": list(require), "verify_exp": False, "verify_nbf": False, "verify_iat": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise refuse("bad_signature", "bad signature (forged, or signed by another key)") from exc
    except jwt.InvalidAudienceError as exc:
        raise refuse("wrong_audience", "wrong audience") from exc
    except jwt.InvalidIssuerError as exc:
        raise refuse("wrong_issuer", "wrong issuer") from exc
    except jwt.InvalidAlgorithmError as exc:
        raise refuse("bad_algorithm", f"algorithm must be one of {', '.join(algorithms)}") from exc
    except jwt.MissingRequiredClaimError as exc:
        raise refuse("missing_claim", f"missing claim {exc.claim!r}") from exc
    except jwt.InvalidTokenError as exc:
        raise refuse("malformed", "malformed token") from exc
    return payload
