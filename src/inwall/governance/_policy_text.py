"""Find where things are in Cedar policy text, because cedarpy's errors carry no positions.

Cedar numbers the policies of a file ``policy0``, ``policy1``, ... in order,
so splitting the text into statements (on ``;`` outside strings and ``//``
comments) maps each policy id to its first line. A syntax error is placed by
parsing the failing statement alone and then its growing prefixes: every
prefix of a well-formed statement fails only with "unexpected end of input",
so the first prefix that fails differently ends on the bad line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["EOF_MESSAGE", "Statement", "locate_in_statement", "locate_syntax_error", "split_statements"]

EOF_MESSAGE: Final = "unexpected end of input"
_QUOTED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Statement:
    """One policy's text, from its first token through its ``;`` (or to the end if unterminated)."""

    text: str
    line: int  # 1-based line of the first token
    complete: bool

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    @property
    def last_line(self) -> int:
        return self.line + self.text.count("\n")


def split_statements(text: str) -> list[Statement]:
    statements: list[Statement] = []
    start: int | None = None
    start_line = 0
    line = 1
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
            continue
        if ch == "/" and text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch.isspace():
            i += 1
            continue
        if start is None:
            start, start_line = i, line
        if ch == '"':
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\":
                    i += 1
                elif text[i] == "\n":
                    line += 1
                i += 1
            i += 1
            continue
        if ch == ";":
            statements.append(Statement(text[start : i + 1], start_line, complete=True))
            start = None
        i += 1
    if start is not None:
        statements.append(Statement(text[start:].rstrip(), start_line, complete=False))
    return statements


def locate_in_statement(statement: Statement, message: str) -> int:
    """The first line of ``statement`` that holds a fragment the message quotes in backticks."""
    for fragment in _QUOTED.findall(message):
        if re.fullmatch(r"policy\d+", fragment):
            continue
        for offset, text in enumerate(statement.lines):
            if fragment in text:
                return statement.line + offset
    return statement.line


def locate_syntax_error(statement: Statement, parse: Callable[[str], str | None]) -> int:
    """Line of the first syntax error in ``statement``; ``parse`` returns the error text or None."""
    lines = statement.lines
    for count in range(1, len(lines)):
        error = parse("\n".join(lines[:count]))
        if error is not None and error != EOF_MESSAGE:
            return statement.line + count - 1
    full = parse(statement.text)
    if full == EOF_MESSAGE:
        return statement.last_line
    return locate_in_statement(statement, full or "")
