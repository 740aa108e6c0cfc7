"""Redaction at the perimeter: secrets in tool results never leave the customer's walls.

The worker and the gateway run a :class:`Redactor` over tool results before
they go back to the control plane. Matches are replaced with
``[REDACTED:<name>]``; callers get counts per pattern name for the audit log,
never the matched text (nothing here logs or returns it).

Built-in patterns:

- ``api_keys``: well-known key formats by prefix — ``sk-`` (OpenAI, and
  Anthropic's ``sk-ant-``, inwall's ``sk-inwall-``), GitHub ``ghp_`` /
  ``gho_`` / ``ghu_`` / ``ghs_`` / ``ghr_`` / ``github_pat_``, Slack
  ``xoxb-`` / ``xoxp-`` / ``xoxa-`` / ``xoxr-`` / ``xoxs-``, AWS access key
  ids ``AKIA`` / ``ASIA``, Google ``AIza``, GitLab ``glpat-``;
- ``card_numbers``: 13 to 19 digits, optionally grouped by single spaces or
  dashes, that pass the Luhn check and start with 2 to 6 (the payment-card
  industries of ISO/IEC 7812; this keeps millisecond timestamps, phone
  numbers and most order ids out). Grouped digits count only when grouped
  like a card (groups of four or more, a last group of three or more), so
  dates and phone numbers never join into one; inside a longer grouped run
  the card is found by its groups (``4111 1111 1111 1111 2024``);
- ``emails``: ASCII e-mail addresses;
- ``secret_assignments`` (off unless asked for): the value in
  ``password=...``, ``api_key: ...``, ``token=...`` when it is 16+
  characters of mixed letters and digits with high entropy.

Custom patterns are regular expressions (named, or called ``custom``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from inwall.errors import ConfigError

__all__ = ["BUILTINS", "DEFAULT_BUILTINS", "Redactor", "luhn_ok"]

DEFAULT_BUILTINS: Final = ("api_keys", "card_numbers", "emails")
BUILTINS: Final = (*DEFAULT_BUILTINS, "secret_assignments")
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

_API_KEYS = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"sk-[A-Za-z0-9_-]{20,}"
    r"|gh[pousr]_[A-Za-z0-9]{36,}"
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|glpat-[0-9A-Za-z_-]{20,}"
    r")(?![A-Za-z0-9_-])"
)
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?:[ -][0-9]+)*(?![0-9])")
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,10}[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
_ASSIGNMENT = re.compile(
    r"(?i)(?P<key>(?<![A-Za-z0-9])(?:api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?|token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[A-Za-z0-9+/_.=-]{16,})"
)


def luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Issuer prefixes and lengths of the networks that matter (Visa, Mastercard, Amex, Discover,
# JCB, Diners, UnionPay). Requiring a real issuer range as well as Luhn keeps ordinary
# numbers — ``seq`` output, ids, timestamps — from being taken for cards.
_ISSUERS: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),
    ("51", "55", frozenset({16})),
    ("2221", "2720", frozenset({16})),
    ("34", "34", frozenset({15})),
    ("37", "37", frozenset({15})),
    ("6011", "6011", frozenset({16, 19})),
    ("644", "649", frozenset({16, 19})),
    ("65", "65", frozenset({16, 19})),
    ("3528", "3589", frozenset({16, 17, 18, 19})),
    ("300", "305", frozenset({14, 16, 19})),
    ("36", "36", frozenset({14, 16, 19})),
    ("38", "39", frozenset({16, 19})),
    ("62", "62", frozenset({16, 17, 18, 19})),
)


def _card(digits: str) -> bool:
    if not 13 <= len(digits) <= 19:
        return False
    issued = any(
        low <= digits[: len(low)] <= high and len(digits) in lengths for low, high, lengths in _ISSUERS
    )
    return issued and luhn_ok(digits)


def _grouped_like_a_card(groups: Sequence[str]) -> bool:
    """Cards print in groups of four or more (4-4-4-4, 4-6-5, 4-4-4-4-3), dates and phones do not."""
    if len(groups) == 1:
        return True
    return all(len(g) >= 4 for g in groups[:-1]) and len(groups[-1]) >= 3


def _entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(c / len(text) * math.log2(c / len(text)) for c in counts.values())


Replace = Callable[[str, str], tuple[str, int]]


def _simple(pattern: re.Pattern[str]) -> Replace:
    def run(text: str, marker: str) -> tuple[str, int]:
        return pattern.subn(marker, text)

    return run


def _cards(text: str, marker: str) -> tuple[str, int]:
    count = 0

    def one_run(match: re.Match[str]) -> str:
        nonlocal count
        run = match.group(0)
        groups = re.split(r"([ -])", run)  # digits, sep, digits, sep, ...
        digits = groups[0::2]
        seps = groups[1::2]
        out: list[str] = []
        i = 0
        while i < len(digits):
            hit = None
            # A card has at most 19 digits, so at most 19 groups: bounding the window keeps
            # long runs of digit groups (``seq -s " " 1 3000``) linear instead of cubic.
            # Inside a long run of digit groups (a table, ``seq`` output) only an unbroken
            # number can be a card: a printed card stands apart from its neighbours.
            widest = 1 if len(digits) > 6 else 19
            for j in range(min(len(digits), i + widest), i, -1):
                candidate = "".join(digits[i:j])
                if len(candidate) > 19:
                    continue
                if len(candidate) < 13:
                    break
                if _grouped_like_a_card(digits[i:j]) and _card(candidate):
                    hit = j
                    break
            if hit is None:
                out.append(digits[i])
                if i < len(seps):
                    out.append(seps[i])
                i += 1
                continue
            count += 1
            out.append(marker)
            if hit - 1 < len(seps):
                out.append(seps[hit - 1])
            i = hit
        return "".join(out)

    return _DIGIT_RUN.sub(one_run, text), count


def _assignments(text: str, marker: str) -> tuple[str, int]:
    count = 0

    def one(match: re.Match[str]) -> str:
        nonlocal count
        value = match.group("value")
        mixed = any(c.isalpha() for c in value) and any(c.isdigit() for c in value)
        if not mixed or _entropy(value) < 3.5:
            return match.group(0)
        count += 1
        return match.group("key") + marker

    return _ASSIGNMENT.sub(one, text), count


_BUILTIN_RULES: Final[Mapping[str, Replace]] = {
    "api_keys": _simple(_API_KEYS),
    "card_numbers": _cards,
    "emails": _simple(_EMAIL),
    "secret_assignments": _assignments,
}


@dataclass(frozen=True)
class _Rule:
    name: str
    replace: Replace


CustomPattern = str | re.Pattern[str] | tuple[str, str | re.Pattern[str]]


def _compile(pattern: str | re.Pattern[str], where: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise ConfigError(f"{where}: invalid regular expression: {exc.msg}") from exc


class Redactor:
    """Replaces configured patterns in tool results; counts what it replaced, keeps nothing."""

    def __init__(
        self,
        builtins: Sequence[str] = DEFAULT_BUILTINS,
        custom: Sequence[CustomPattern] = (),
    ) -> None:
        if isinstance(builtins, str):
            raise ConfigError("redact builtins must be a list of names, not a string")
        rules: list[_Rule] = []
        for name in dict.fromkeys(builtins):
            if name not in _BUILTIN_RULES:
                raise ConfigError(f"unknown redaction pattern {name!r} (known: {', '.join(BUILTINS)})")
            rules.append(_Rule(name, _BUILTIN_RULES[name]))
        for index, item in enumerate(custom):
            name, pattern = item if isinstance(item, tuple) else ("custom", item)
            where = f"custom[{index}]"
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise ConfigError(f"{where}: name must match [a-z][a-z0-9_]* (at most 40 characters)")
            if name in _BUILTIN_RULES:
                raise ConfigError(f"{where}: name {name!r} is a built-in pattern's")
            compiled = _compile(pattern, where)
            if compiled.search(""):
                raise ConfigError(f"{where}: the pattern matches the empty string")
            rules.append(_Rule(name, _simple(compiled)))
        self._rules = tuple(rules)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(rule.name for rule in self._rules))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Redactor:
        """Build from a TOML/JSON table: ``builtins = [names]``, ``custom = [regex or {name, pattern}]``.

        Unknown keys are errors, so a typo cannot silently turn redaction off.
        """
        if not isinstance(config, Mapping):
            raise ConfigError("redact: expected a table")
        unknown = set(config) - {"builtins", "custom"}
        if unknown:
            raise ConfigError(f"redact: unknown keys {sorted(unknown)} (allowed: builtins, custom)")
        builtins = config.get("builtins", list(DEFAULT_BUILTINS))
        if not isinstance(builtins, list) or not all(isinstance(b, str) for b in builtins):
            raise ConfigError("redact.builtins: expected a list of names")
        raw_custom = config.get("custom", [])
        if not isinstance(raw_custom, list):
            raise ConfigError("redact.custom: expected a list")
        custom: list[CustomPattern] = []
        for index, entry in enumerate(raw_custom):
            where = f"redact.custom[{index}]"
            if isinstance(entry, str):
                custom.append(_compile(entry, where))
                continue
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{where}: expected a regex string or a table with name and pattern")
            extra = set(entry) - {"name", "pattern", "ignore_case"}
            if extra or "pattern" not in entry:
                raise ConfigError(
                    f"{where}: keys are name, pattern (required) and ignore_case; got {sorted(entry)}"
                )
            pattern, ignore_case = entry["pattern"], entry.get("ignore_case", False)
            if not isinstance(pattern, str) or not isinstance(ignore_case, bool):
                raise ConfigError(f"{where}: pattern must be a string and ignore_case a boolean")
            name = entry.get("name", "custom")
            if not isinstance(name, str):
                raise ConfigError(f"{where}: name must be a string")
            custom.append((name, _compile(pattern, where, ignore_case=ignore_case)))
        try:
            return cls(builtins, custom)
        except ConfigError as exc:
            raise ConfigError(f"redact: {exc.message}") from exc

    def redact_text(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        for rule in self._rules:
            text, hits = rule.replace(text, f"[REDACTED:{rule.name}]")
            if hits:
                counts[rule.name] = counts.get(rule.name, 0) + hits
        return text, counts

    def redact_blocks(
        self, content_blocks: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Anthropic-style content blocks: text, nested tool_result content and text documents.

        Images and other binary blocks pass through untouched. The input is
        not modified; blocks that change are copies.
        """
        totals: Counter[str] = Counter()
        out = [self._block(block, totals) for block in content_blocks]
        return out, dict(totals)

    def _block(self, block: Mapping[str, Any], totals: Counter[str]) -> dict[str, Any]:
        kind = block.get("type")
        result = dict(block)
        if kind == "text" and isinstance(block.get("text"), str):
            result["text"], counts = self.redact_text(block["text"])
            totals.update(counts)
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                result["content"], counts = self.redact_text(content)
                totals.update(counts)
            elif isinstance(content, list):
                result["content"] = [self._block(b, totals) if isinstance(b, Mapping) else b for b in content]
        elif kind == "document":
            source = block.get("source")
            if (
                isinstance(source, Mapping)
                and source.get("type") == "text"
                and isinstance(source.get("data"), str)
            ):
                new_source = dict(source)
                new_source["data"], counts = self.redact_text(source["data"])
                totals.update(counts)
                result["source"] = new_source
        return result
