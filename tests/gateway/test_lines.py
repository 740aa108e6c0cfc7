"""The stdio child's newline framing: complete lines out, each byte searched once."""

from __future__ import annotations

from inwall.gateway._lines import LineSplitter

MiB = 1024 * 1024


def test_a_16_mib_line_in_small_reads_is_searched_once() -> None:
    # Searching the whole buffer on every read made a 16 MiB line in 4 KiB reads cost
    # 4096 * 8 MiB = 32 GiB of scanning; each byte must be looked at once.
    splitter = LineSplitter()
    line = b"x" * (16 * MiB)
    fed = 0
    for i in range(0, len(line), 4096):
        assert splitter.feed(line[i : i + 4096]) == []
        fed += len(line[i : i + 4096])
        assert splitter.examined == fed
    assert splitter.pending == len(line)
    assert splitter.feed(b"\n{}\n") == [line, b"{}"]
    assert splitter.examined == fed + 4
    assert splitter.pending == 0


def test_lines_split_anywhere_come_out_whole_and_in_order() -> None:
    stream = b'{"id":1}\n\n{"id":2}\r\n{"id":3}\npartial'
    for size in range(1, len(stream) + 1):
        splitter = LineSplitter()
        out: list[bytes] = []
        for i in range(0, len(stream), size):
            out += splitter.feed(stream[i : i + size])
        assert out == [b'{"id":1}', b"", b'{"id":2}\r', b'{"id":3}'], size
        assert splitter.pending == len(b"partial")
        assert splitter.examined == len(stream)
