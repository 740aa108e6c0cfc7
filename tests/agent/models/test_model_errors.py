"""The HTTP-failure policy shared by both API providers (``_errors``), without I/O."""

from __future__ import annotations

import email.utils

import pytest

from inwall.agent.models._errors import (
    MAX_DETAIL_CHARS,
    connection_error,
    parse_retry_after,
    redact,
    safe_origin,
    scrub_exception,
    status_error,
)
from inwall.agent.models.base import ModelOverloaded, ModelRateLimited, ModelRequestFailed

SECRET = "sk-ant-very-secret-value"


def _status(status: int, error_type: str | None = None, **headers: str) -> object:
    return status_error(
        label="the API",
        status=status,
        headers=headers,
        error_type=error_type,
        api_message=f"echo {SECRET}",
        request_id="req_1",
        secrets=[SECRET, None],
    )


@pytest.mark.parametrize(
    ("status", "error_type", "cls", "retryable"),
    [
        (429, None, ModelRateLimited, True),
        (400, "rate_limit_error", ModelRateLimited, True),
        (529, None, ModelOverloaded, True),
        (503, None, ModelOverloaded, True),
        (500, "overloaded_error", ModelOverloaded, True),
        (500, None, ModelRequestFailed, True),
        (502, None, ModelRequestFailed, True),
        (504, None, ModelRequestFailed, True),
        (408, None, ModelRequestFailed, True),
        (409, None, ModelRequestFailed, True),
        (400, None, ModelRequestFailed, False),
        (401, None, ModelRequestFailed, False),
        (404, None, ModelRequestFailed, False),
        (422, None, ModelRequestFailed, False),
    ],
)
def test_policy(status: int, error_type: str | None, cls: type, retryable: bool) -> None:
    error = _status(status, error_type)
    assert type(error) is cls
    assert error.retryable is retryable  # type: ignore[attr-defined]
    assert SECRET not in str(error)
    assert "req_1" in str(error)


@pytest.mark.parametrize(("header", "retryable"), [("true", True), ("false", False), ("maybe", False)])
def test_x_should_retry_overrides(header: str, retryable: bool) -> None:
    assert _status(400, **{"x-should-retry": header}).retryable is retryable  # type: ignore[attr-defined]
    if header != "maybe":
        assert _status(529, **{"x-should-retry": header}).retryable is retryable  # type: ignore[attr-defined]


def test_long_messages_are_clipped_on_one_line() -> None:
    error = status_error(
        label="the API",
        status=400,
        headers=None,
        error_type=None,
        api_message="x\n" * 2000,
        request_id=None,
        secrets=[],
    )
    assert "\n" not in str(error)
    assert len(str(error)) <= MAX_DETAIL_CHARS + 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after-ms": "20"}, 0.02),
        ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
        ({"retry-after": "whenever"}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"retry-after": header}, now=now) == 30.0
    assert parse_retry_after({"retry-after": email.utils.formatdate(now - 30, usegmt=True)}, now=now) == 0.0
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        (None, "(default)"),
        ("https://api.anthropic.com", "https://api.anthropic.com"),
        ("http://user:pass@127.0.0.1:8000/v1?key=abc", "http://127.0.0.1:8000"),
        ("http://[::1]:11434/v1", "http://[::1]:11434"),
        ("http://host:notaport/", "http://host"),
    ],
)
def test_safe_origin(url: str | None, origin: str) -> None:
    assert safe_origin(url) == origin


def test_redact_skips_placeholder_keys() -> None:
    assert redact("key x in text", ["x", None, ""]) == "key x in text"
    assert redact(f"a {SECRET} b {SECRET}", [SECRET]) == "a [redacted] b [redacted]"


def test_scrub_exception() -> None:
    class SDKError(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message, 7)
            self.message = message

    exc = SDKError(f"bad {SECRET}")
    scrub_exception(exc, [SECRET])
    assert SECRET not in str(exc)
    assert exc.message == "bad [redacted]"
    assert exc.args[1] == 7

    plain = ValueError(f"bad {SECRET}")
    scrub_exception(plain, ["short"])  # nothing worth scrubbing: untouched
    assert SECRET in str(plain)


def test_connection_error_wording() -> None:
    refused = connection_error(label="the API", base_url="http://u:p@127.0.0.1:1/v1", timed_out=False)
    timed_out = connection_error(label="the API", base_url=None, timed_out=True)
    assert str(refused) == "the API at http://127.0.0.1:1 could not be reached"
    assert str(timed_out) == "the API at (default) timed out"
    assert refused.retryable
    assert timed_out.retryable
