"""`inwall sandbox exec [--settings FILE] [--workdir DIR] -- CMD [ARGS...]`.

A thin shell over :meth:`inwall.sandbox.runner.Sandbox.exec_foreground`: the
exit status is the command's (128+N when it died of signal N), and 125 means
inwall itself refused or failed (message on stderr), as ``env`` and ``docker``
do. Without ``--settings`` the strict default applies: no network, writes
only in the workdir (default: the current directory).

As root, the command runs as an unprivileged uid (``inwall.run_as_uid``,
default 65534), so the workdir must belong to that uid; a root-owned workdir
is refused with the command that makes a suitable one.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["EXIT_INWALL_ERROR", "configure", "run"]

EXIT_INWALL_ERROR = 125


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    ex = sub.add_parser(
        "exec",
        help="run one command in the sandbox",
        description="Run one command sandboxed; exit status is the command's, 125 for inwall's own errors.",
    )
    ex.add_argument(
        "--settings", metavar="FILE", help="srt-compatible JSON settings (default: strict built-in)"
    )
    ex.add_argument("--workdir", metavar="DIR", help="the writable workspace (default: current directory)")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def run(args: argparse.Namespace) -> int:
    from inwall.errors import InwallError

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "inwall sandbox exec: no command given (usage: inwall sandbox exec -- CMD [ARGS...])",
            file=sys.stderr,
        )
        return EXIT_INWALL_ERROR
    try:
        from inwall.sandbox.policy import SandboxSettings
        from inwall.sandbox.runner import Sandbox

        settings = SandboxSettings.load(args.settings) if args.settings else SandboxSettings.default()
        import os

        return Sandbox(settings, args.workdir or os.getcwd()).exec_foreground(cmd)
    except InwallError as exc:
        print(f"inwall sandbox exec: {exc}", file=sys.stderr)
        return EXIT_INWALL_ERROR
    except OSError as exc:
        print(f"inwall sandbox exec: {exc}", file=sys.stderr)
        return EXIT_INWALL_ERROR
