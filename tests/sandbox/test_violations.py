"""Filesystem denials read back from a command's stderr: found when present, cheap when absent."""

from __future__ import annotations

from inwall.sandbox.violations import (
    MAX_RENDERED,
    EgressDenied,
    FilesystemDenied,
    audit_fields,
    from_stderr,
    render_violations,
)


def test_shell_and_python_denials_are_recognised() -> None:
    stderr = (
        b"bash: /etc/passwd: Read-only file system\n"
        b"PermissionError: [Errno 13] Permission denied: '/root/secret'\n"
        b"cat: /proc/1/mem: Operation not permitted\n"
    )
    assert from_stderr(stderr) == [  # in the order they were printed
        FilesystemDenied(path="/etc/passwd", op="write", detail="Read-only file system"),
        FilesystemDenied(path="/root/secret", op="access", detail="Permission denied"),
        FilesystemDenied(path="/proc/1/mem", op="access", detail="Operation not permitted"),
    ]


def test_ignored_prefixes_are_not_reported() -> None:
    stderr = b"bash: /var/cache/x: Read-only file system\nbash: /etc/x: Read-only file system\n"
    found = from_stderr(stderr, ignore={"*": ["/var/cache"]})
    assert [v.path for v in found] == ["/etc/x"]


def test_a_large_denial_free_output_reports_nothing() -> None:
    rows = b"row 000001 abcdefghijklmnopqrstuvwxyz0123: not an error\n" * 25_000
    assert from_stderr(rows) == []
    assert render_violations(from_stderr(rows)) == ""


def test_a_denial_at_the_end_of_a_large_output_is_found() -> None:
    rows = b"row abcdefghijklmnopqrstuvwxyz0123\n" * 25_000 + b"rm: /usr/bin/ls: Read-only file system\n"
    assert [v.path for v in from_stderr(rows)] == ["/usr/bin/ls"]


def test_a_flood_of_denials_renders_a_bounded_block() -> None:
    """20,000 denials (a scan through the proxy) make 50 lines and a count, not a megabyte."""
    flood = [EgressDenied(host=f"h{i}.example", port=443, reason="not allowed") for i in range(20_000)]
    block = render_violations([*flood, flood[0], flood[1]], omitted=7)
    lines = block.splitlines()
    assert lines[0] == "<sandbox_violations>" and lines[-1] == "</sandbox_violations>"
    assert lines[1 : MAX_RENDERED + 1] == [v.line() for v in flood[:MAX_RENDERED]]  # first seen, in order
    assert lines[-2] == f"… and {20_000 - MAX_RENDERED + 7} more"  # repeats are not counted again
    assert len(lines) == MAX_RENDERED + 3


def test_repeated_denials_show_once_and_a_short_list_is_whole() -> None:
    read = FilesystemDenied(path="/etc/shadow", op="access", detail="Permission denied")
    write = FilesystemDenied(path="/usr/x", op="write", detail="Read-only file system")
    assert render_violations([read, write, read, read]) == (
        "<sandbox_violations>\n"
        "deny file-access /etc/shadow (Permission denied)\n"
        "deny file-write /usr/x (Read-only file system)\n"
        "</sandbox_violations>"
    )
    assert render_violations([], omitted=3) == "<sandbox_violations>\n… and 3 more\n</sandbox_violations>"


def test_audit_fields_carry_the_kind_as_violation() -> None:
    """``kind`` is the audit record's own field, so the violation's kind travels under another name."""
    fields = audit_fields(EgressDenied(host="example.com", port=443, reason="not allowed").to_dict())
    assert fields == {
        "violation": "egress_denied",
        "host": "example.com",
        "port": 443,
        "reason": "not allowed",
    }
    assert audit_fields({"host": "x"}) == {"host": "x"}
