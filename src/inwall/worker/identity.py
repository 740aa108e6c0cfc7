"""Where the worker gets the identity token of the call it is about to run.

``GET /v1/inwall/sessions/{session_id}/identity`` (Bearer: the environment
key) answers ``{"type": "identity_token", "token", "tool_use_id", "tool"}``
for the session's oldest built-in tool call that has no result yet — the
one the SDK's runner is about to execute, since it runs a session's calls
one at a time, in order — and 404 when nothing is pending (or the control
plane, like Anthropic's hosted one, mints no tokens). The token is only
*fetched* here; :class:`~inwall.worker.perimeter.Perimeter` verifies it.

Known limit of "oldest pending": a call the control plane gated behind a
user confirmation (``always_ask``) stays pending while later calls run, so
those later calls get its token and are refused (wrong tool or input)
until it is answered. A confirmation the user *denied* leaves its call
without a result for good. Both want the endpoint to skip such calls (or to
take the tool and input digest and answer for the oldest call that
matches); see the worker's report.

:class:`IdentitySource` is the seam: tests hand the runtime a real twin that
returns tokens they minted with :class:`~inwall.governance.IdentityIssuer`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol
from urllib.parse import quote

from inwall.errors import Unavailable

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

__all__ = ["ControlPlaneIdentity", "IdentitySource", "StaticIdentity"]

log = logging.getLogger("inwall.worker")


class IdentitySource(Protocol):
    async def token(self, *, tool: str | None = None, input_sha256: str | None = None) -> str | None:
        """The token of the pending call (the oldest matching ``tool`` and ``input_sha256`` when given);
        None when none is on offer; :class:`Unavailable` when unreachable."""
        ...


class ControlPlaneIdentity:
    """Asks the control plane, through the worker's SDK client (its environment key)."""

    def __init__(self, client: AsyncAnthropic, session_id: str, *, timeout_s: float = 10.0) -> None:
        self._client = client
        self._path = f"/v1/inwall/sessions/{quote(session_id, safe='')}/identity"
        self._timeout_s = timeout_s

    async def token(self, *, tool: str | None = None, input_sha256: str | None = None) -> str | None:
        from anthropic import APIError, APIStatusError, NotFoundError

        query = {k: v for k, v in (("tool", tool), ("input_sha256", input_sha256)) if v is not None}
        try:
            body = await self._client.get(
                self._path,
                cast_to=object,
                options={"timeout": self._timeout_s, "max_retries": 2, "params": query},
            )
        except NotFoundError:
            return None
        except APIStatusError as exc:  # the message would quote the body: keep to the status
            raise Unavailable(f"identity token request failed with HTTP {exc.status_code}") from exc
        except APIError as exc:
            raise Unavailable(f"identity token request failed: {type(exc).__name__}") from exc
        if not isinstance(body, dict) or body.get("type") != "identity_token":
            raise Unavailable("the control plane's identity answer is not an identity_token")
        token = body.get("token")
        if not isinstance(token, str) or not token:
            raise Unavailable("the control plane's identity answer holds no token")
        return token


class StaticIdentity:
    """Hands out given tokens in order, then None: the real twin tests (and embedders) drive."""

    def __init__(self, *tokens: str | None) -> None:
        self._tokens = list(tokens)
        self.asked = 0

    async def token(self, *, tool: str | None = None, input_sha256: str | None = None) -> str | None:
        self.asked += 1
        return self._tokens.pop(0) if self._tokens else None
