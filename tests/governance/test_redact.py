"""Redaction: each pattern, Luhn negatives, ordinary numbers untouched, counts, strict config."""

from __future__ import annotations

import re
from typing import Any

import pytest

from inwall.errors import ConfigError
from inwall.governance import Redactor
from inwall.governance.redact import luhn_ok

API_KEYS = [
    "sk-ant-api03-" + "A1b2C3d4" * 10,
    "sk-proj-" + "x9Y8z7W6" * 6,
    "sk-inwall-" + "0123456789abcdef" * 2,
    "ghp_" + "a1B2c3D4e5" * 3 + "abcdef",
    "github_pat_11ABCDEFG0" + "x" * 60,
    "xoxb-1234567890-0987654321-AbCdEfGhIjKl",
    "xoxp-1234567890-abcdef",
    "AKIAIOSFODNN7EXAMPLE",
    "AIzaSyA-" + "b" * 31,
    "glpat-" + "Zx9" * 7,
]
CARDS = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4242424242424242",
    "5555 5555 5555 4444",
    "3782 822463 10005",  # Amex 4-6-5
    "6011 0009 9013 9424",
    "4000 0566 5566 5556",
    "4222222222222",  # 13-digit Visa
]
ORDINARY = [
    "order 1234567890123 shipped",  # 13 digits, starts with 1
    "ts 1700000000000 and 1733400000123",  # millisecond timestamps
    "call +1 555-123-4567 or 020 7946 0958",
    "dates 2024-01-15 2024-01-16 2024-01-17 2024-01-18",
    "port 8080, pid 4242, size 4111111111",
    "version 4.111.1111.1111",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "sk-learn is a library; gh_pages; the task-sk-12",
    "no keys here: AKIA-short and AIza",
    "user@ not an address, nor @example.com",
]


@pytest.fixture(scope="module")
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("key", API_KEYS)
def test_api_keys(redactor: Redactor, key: str) -> None:
    text, counts = redactor.redact_text(f"config: {key}\n")
    assert text == "config: [REDACTED:api_keys]\n"
    assert counts == {"api_keys": 1}


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers(redactor: Redactor, card: str) -> None:
    text, counts = redactor.redact_text(f"paid with {card}.")
    assert text == "paid with [REDACTED:card_numbers]."
    assert counts == {"card_numbers": 1}


def test_card_inside_a_longer_grouped_run(redactor: Redactor) -> None:
    text, counts = redactor.redact_text("card 4111 1111 1111 1111 2024 exp")
    assert text == "card [REDACTED:card_numbers] 2024 exp"
    assert counts == {"card_numbers": 1}


def test_luhn_negatives(redactor: Redactor) -> None:
    for number in ("4111 1111 1111 1112", "4242424242424241", "5555555555554445", "378282246310006"):
        assert not luhn_ok(number.replace(" ", ""))
        assert redactor.redact_text(number) == (number, {})
    assert luhn_ok("79927398713")


def test_a_card_glued_inside_a_longer_number_is_not_a_card(redactor: Redactor) -> None:
    for text in ("94111111111111111", "41111111111111110000"):
        assert redactor.redact_text(text) == (text, {})


@pytest.mark.parametrize("text", ORDINARY)
def test_no_false_positives(redactor: Redactor, text: str) -> None:
    assert redactor.redact_text(text) == (text, {})


def test_emails(redactor: Redactor) -> None:
    text, counts = redactor.redact_text("write to jane.doe+ops@mail.corp.example or BOB@EXAMPLE.COM.")
    assert text == "write to [REDACTED:emails] or [REDACTED:emails]."
    assert counts == {"emails": 2}


def test_counts_across_patterns(redactor: Redactor) -> None:
    text = f"{API_KEYS[0]} {API_KEYS[7]} 4111111111111111 a@b.io 5555-5555-5555-4444"
    redacted, counts = redactor.redact_text(text)
    assert counts == {"api_keys": 2, "card_numbers": 2, "emails": 1}
    assert "4111" not in redacted and "AKIA" not in redacted and "@" not in redacted


def test_secret_assignments_are_opt_in() -> None:
    text = 'DB_PASSWORD="Xk9mQ2vL8pR4tZ7wY3" token: aaaaaaaaaaaaaaaaaaaaaa api_key=Zq81Lm29Xc74Vb56Nm'
    assert Redactor().redact_text(text) == (text, {})
    redacted, counts = Redactor(builtins=("secret_assignments",)).redact_text(text)
    assert redacted == (
        'DB_PASSWORD="[REDACTED:secret_assignments]" token: aaaaaaaaaaaaaaaaaaaaaa '
        "api_key=[REDACTED:secret_assignments]"
    )
    assert counts == {"secret_assignments": 2}


def test_custom_patterns() -> None:
    redactor = Redactor(builtins=(), custom=[r"EMP-\d{6}", ("ticket", re.compile(r"SEC-\d+"))])
    text, counts = redactor.redact_text("EMP-123456 filed SEC-42 about 4111111111111111")
    assert text == "[REDACTED:custom] filed [REDACTED:ticket] about 4111111111111111"
    assert counts == {"custom": 1, "ticket": 1}
    assert redactor.names == ("custom", "ticket")


def test_blocks(redactor: Redactor) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "a@b.io"}}
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": "key " + API_KEYS[3]},
        image,
        {
            "type": "tool_result",
            "tool_use_id": "toolu_1",
            "content": [{"type": "text", "text": "mail a@b.io"}, image],
        },
        {"type": "tool_result", "tool_use_id": "toolu_2", "content": "card 4242424242424242"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x@y.io"}},
    ]
    original = repr(blocks)
    out, counts = redactor.redact_blocks(blocks)
    assert repr(blocks) == original  # input untouched
    assert out[0]["text"] == "key [REDACTED:api_keys]"
    assert out[1] == image
    assert out[2]["content"][0]["text"] == "mail [REDACTED:emails]" and out[2]["content"][1] == image
    assert out[3]["content"] == "card [REDACTED:card_numbers]"
    assert out[4]["source"]["data"] == "[REDACTED:emails]"
    assert counts == {"api_keys": 1, "emails": 2, "card_numbers": 1}


def test_from_config() -> None:
    redactor = Redactor.from_config(
        {
            "builtins": ["emails"],
            "custom": [r"EMP-\d{6}", {"name": "ticket", "pattern": "sec-\\d+", "ignore_case": True}],
        }
    )
    text, counts = redactor.redact_text("a@b.io EMP-000001 SEC-9 4111111111111111")
    assert text == "[REDACTED:emails] [REDACTED:custom] [REDACTED:ticket] 4111111111111111"
    assert counts == {"emails": 1, "custom": 1, "ticket": 1}
    assert Redactor.from_config({}).names == ("api_keys", "card_numbers", "emails")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"builtin": ["emails"]}, "unknown keys"),
        ({"builtins": ["phone_numbers"]}, "unknown redaction pattern"),
        ({"builtins": "emails"}, "list of names"),
        ({"custom": ["("]}, r"custom\[0\]: invalid regular expression"),
        ({"custom": [{"pattern": "x", "flags": "i"}]}, "keys are"),
        ({"custom": [{"name": "Bad Name", "pattern": "x"}]}, "name must match"),
        ({"custom": [{"name": "emails", "pattern": "x"}]}, "built-in"),
        ({"custom": ["a*"]}, "empty string"),
        ({"custom": "x"}, "expected a list"),
    ],
)
def test_from_config_is_strict(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Redactor.from_config(config)
