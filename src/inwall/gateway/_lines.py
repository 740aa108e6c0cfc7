"""Newline framing for a stdio child's output, as a sans-I/O core: bytes in, complete lines out."""

from __future__ import annotations

__all__ = ["LineSplitter"]


class LineSplitter:
    """Splits a byte stream into ``\\n``-terminated lines, looking at each byte once.

    One line may arrive in thousands of pipe reads (a 16 MiB tool result); searching the
    whole buffer again on every read would make that quadratic, so each search resumes
    where the previous one stopped.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # bytes of ``_buffer`` known to hold no newline
        self.examined = 0
        """Bytes searched for a newline, ever: equals the bytes fed, never more (tests check it)."""

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held here."""
        return len(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """The lines ``chunk`` completes (without their ``\\n``), in order."""
        buffer = self._buffer
        buffer += chunk
        lines: list[bytes] = []
        start = 0
        while (newline := buffer.find(b"\n", self._scanned)) >= 0:
            self.examined += newline + 1 - self._scanned
            lines.append(bytes(buffer[start:newline]))
            start = self._scanned = newline + 1
        self.examined += len(buffer) - self._scanned
        if start:
            del buffer[:start]  # once per read, not once per line
        self._scanned = len(buffer)
        return lines
