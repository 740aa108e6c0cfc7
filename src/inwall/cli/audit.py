"""`inwall audit verify FILE...`: check hash-chained audit logs for tampering."""

from __future__ import annotations

import argparse
import json
import os
import sys

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = sub.add_parser("verify", help="verify one or more audit log files")
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument(
        "--key-file",
        help="file holding the HMAC key the log was sealed with (default: $INWALL_AUDIT_KEY_FILE, else none)",
    )
    verify.add_argument("--json", action="store_true", help="print one JSON report per file")


def run(args: argparse.Namespace) -> int:
    from inwall.audit import verify_file

    key_file = args.key_file or os.environ.get("INWALL_AUDIT_KEY_FILE")
    key = open(key_file, "rb").read().strip() if key_file else None  # noqa: SIM115 - read once
    status = 0
    for path in args.files:
        try:
            report = verify_file(path, key=key)
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror}", file=sys.stderr)
            status = 2
            continue
        if args.json:
            print(
                json.dumps(
                    {
                        "file": path,
                        "ok": report.ok,
                        "records": report.records,
                        "last_seq": report.last_seq,
                        "last_hash": report.last_hash,
                        "problems": [p.__dict__ for p in report.problems],
                    }
                )
            )
        elif report.ok:
            print(f"{path}: OK ({report.records} records, head {report.last_hash[:16]})")
        else:
            print(f"{path}: TAMPERED ({len(report.problems)} problems in {report.records} records)")
            for p in report.problems:
                print(f"  line {p.line}: {p.kind}: {p.detail}")
        if not report.ok:
            status = 1
    return status
