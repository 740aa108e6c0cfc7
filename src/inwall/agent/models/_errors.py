"""Turning an HTTP failure of a model API into a ``ModelError`` the turn loop can act on.

Both official SDKs raise the same shapes (a status error with a response, a
connection error, a timeout), so the policy lives here once and each provider
only pulls the facts out of its own exception classes.

The policy follows the SDKs' own retry rules, because the loop does the
retrying that we switched off in the SDKs:

* 429, or an error body of type ``rate_limit_error``: ``ModelRateLimited``;
* 529 or 503, or an error body of type ``overloaded_error``: ``ModelOverloaded``;
* any other 5xx, 408, 409, a dropped connection or a timeout: a
  ``ModelRequestFailed`` marked retryable.  It is not an overload (the
  session.error the user sees should say "request failed", not "overloaded"),
  but backing off can cure it, exactly as the SDKs would have retried it;
* any other 4xx (bad request, auth, unknown model): ``ModelRequestFailed``,
  not retryable.

An ``x-should-retry: true|false`` header overrides the retryable flag, as in the
SDKs.  ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date) become
``retry_after_s`` on every class.  Credentials are scrubbed from every message we
build and from the SDK exception we chain, so a server that echoes the key
cannot leak it into logs.
"""

from __future__ import annotations

import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import Iterable, Mapping

from inwall.agent.models.base import ModelError, ModelOverloaded, ModelRateLimited, ModelRequestFailed

__all__ = [
    "MAX_DETAIL_CHARS",
    "connection_error",
    "parse_retry_after",
    "redact",
    "safe_origin",
    "scrub_exception",
    "status_error",
]

MAX_DETAIL_CHARS = 500
_REDACTED = "[redacted]"
# Shorter "secrets" are placeholders such as the dummy key a local vLLM accepts;
# scrubbing them would mangle ordinary words in the message.
_MIN_SECRET_LEN = 8
_RETRYABLE_4XX = frozenset({408, 409})


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= _MIN_SECRET_LEN:
            text = text.replace(secret, _REDACTED)
    return text


def scrub_exception(exc: BaseException, secrets: Iterable[str | None]) -> None:
    """Redact credentials from a foreign exception we are about to chain.

    The chained cause is printed with every traceback; the message is all we can
    reach, the request object (which holds the key in a header) is never printed.
    """
    wanted = [s for s in secrets if s and len(s) >= _MIN_SECRET_LEN]
    if not wanted:
        return
    exc.args = tuple(redact(a, wanted) if isinstance(a, str) else a for a in exc.args)
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        # A read-only attribute is fine to skip: args, which str() prints, are scrubbed already.
        with contextlib.suppress(AttributeError):
            exc.message = redact(message, wanted)  # type: ignore[attr-defined]  # SDK errors carry .message


def safe_origin(url: str | None) -> str:
    """``scheme://host[:port]`` of a base URL: enough to debug, without userinfo, path or query."""
    if not url:
        return "(default)"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def parse_retry_after(headers: Mapping[str, str] | None, *, now: float | None = None) -> float | None:
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    parsed = email.utils.parsedate_tz(raw)
    if parsed is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, float(email.utils.mktime_tz(parsed)) - current)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    if len(text) > MAX_DETAIL_CHARS:
        return text[:MAX_DETAIL_CHARS] + "…"
    return text


def status_error(
    *,
    label: str,
    status: int,
    headers: Mapping[str, str] | None,
    error_type: str | None,
    api_message: str | None,
    request_id: str | None,
    secrets: Iterable[str | None],
) -> ModelError:
    secrets = list(secrets)
    retry_after = parse_retry_after(headers)
    detail = f"{label} answered HTTP {status}"
    if error_type:
        detail += f" ({error_type})"
    if api_message:
        detail += f": {api_message}"
    if request_id:
        detail += f" [request id {request_id}]"
    message = redact(_clip(detail), secrets)

    should_retry = headers.get("x-should-retry") if headers is not None else None
    override: bool | None = {"true": True, "false": False}.get(should_retry or "")

    if status == 429 or error_type == "rate_limit_error":
        return ModelRateLimited(message, retry_after_s=retry_after, retryable=override)
    if status in (503, 529) or error_type == "overloaded_error":
        return ModelOverloaded(message, retry_after_s=retry_after, retryable=override)
    retryable = status >= 500 or status in _RETRYABLE_4XX
    return ModelRequestFailed(
        message,
        retry_after_s=retry_after,
        retryable=retryable if override is None else override,
    )


def connection_error(*, label: str, base_url: str | None, timed_out: bool) -> ModelError:
    what = "timed out" if timed_out else "could not be reached"
    return ModelRequestFailed(f"{label} at {safe_origin(base_url)} {what}", retryable=True)
