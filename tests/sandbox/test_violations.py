"""Filesystem denials read back from a command's stderr: found when present, cheap when absent."""

from __future__ import annotations

from inwall.sandbox.violations import FilesystemDenied, from_stderr, render_violations


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
