"""Find the line of every key in a TOML document, so config errors can name it.

``tomllib`` gives values but no positions. This scanner runs only over text
``tomllib`` has already accepted, so it can be lenient: it tracks table
headers, (dotted, quoted) keys, inline tables and arrays, and skips strings of
all four kinds, recording ``path -> line`` (1-based). Array elements get an
integer path component.
"""

from __future__ import annotations

__all__ = ["Path", "locate_keys"]

Path = tuple[str | int, ...]

_BARE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.found: dict[Path, int] = {}

    def peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def advance(self, n: int = 1) -> None:
        chunk = self.text[self.pos : self.pos + n]
        self.line += chunk.count("\n")
        self.pos += n

    def skip_ws(self, newlines: bool) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.advance()
            elif ch == "#":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self.pos += 1
            else:
                return

    def string(self) -> str:
        for quote in ('"""', "'''"):
            if self.peek(3) == quote:
                self.advance(3)
                end = self.text.find(quote, self.pos)
                while quote[0] == '"' and end > 0 and _escaped(self.text, end):
                    end = self.text.find(quote, end + 1)
                end = len(self.text) if end < 0 else end
                # a closing delimiter may be followed by up to two more quote characters
                while self.text[end + 3 : end + 4] == quote[0]:
                    end += 1
                value = self.text[self.pos : end]
                self.advance(end - self.pos + 3)
                return value
        quote = self.peek()
        self.advance()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] != quote:
            if quote == '"' and self.text[self.pos] == "\\":
                self.pos += 1
            self.pos += 1
        value = self.text[start : self.pos]
        self.advance()
        return value if quote == "'" else _unescape(value)

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_ws(newlines=False)
            if self.peek() in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.pos
                while self.pos < len(self.text) and self.text[self.pos] in _BARE:
                    self.pos += 1
                parts.append(self.text[start : self.pos])
            self.skip_ws(newlines=False)
            if self.peek() != ".":
                return parts
            self.advance()

    def value(self, path: Path) -> None:
        self.found.setdefault(path, self.line)
        ch = self.peek()
        if ch in ('"', "'"):
            self.string()
        elif ch == "[":
            self.advance()
            index = 0
            while True:
                self.skip_ws(newlines=True)
                if self.peek() in ("]", ""):
                    self.advance()
                    return
                self.value((*path, index))
                index += 1
                self.skip_ws(newlines=True)
                if self.peek() == ",":
                    self.advance()
        elif ch == "{":
            self.advance()
            while True:
                self.skip_ws(newlines=True)
                if self.peek() in ("}", ""):
                    self.advance()
                    return
                self.keyval(path)
                self.skip_ws(newlines=True)
                if self.peek() == ",":
                    self.advance()
        else:  # numbers, booleans, dates: up to a delimiter
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def keyval(self, table: Path) -> None:
        line = self.line
        parts = self.key()
        for i in range(1, len(parts) + 1):
            self.found.setdefault((*table, *parts[:i]), line)
        self.skip_ws(newlines=False)
        if self.peek() == "=":
            self.advance()
        self.skip_ws(newlines=False)
        self.value((*table, *parts))

    def document(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self.skip_ws(newlines=True)
            if self.pos >= len(self.text):
                return self.found
            if self.peek() == "[":
                double = self.peek(2) == "[["
                self.advance(2 if double else 1)
                line = self.line
                parts = self.key()
                self.advance(2 if double else 1)
                for i in range(1, len(parts) + 1):
                    self.found.setdefault(tuple(parts[:i]), line)
                table = tuple(parts)
            else:
                self.keyval(table)


def _escaped(text: str, index: int) -> bool:
    backslashes = 0
    while index - backslashes - 1 >= 0 and text[index - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    try:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError:
        return value


def locate_keys(text: str) -> dict[Path, int]:
    """Map every key path (and array element) to the line it starts on."""
    return _Scanner(text).document()
