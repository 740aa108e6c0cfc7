"""`inwall` entry point.

Subcommands live in their own modules (``inwall.cli.<name>``), each exposing
``configure(parser)`` and ``run(args) -> int``. Only the module of the chosen
subcommand is imported, so ``inwall sandbox exec`` starts without loading the
server's dependencies: start-up time is part of the sandbox's per-command cost.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["main", "run"]

COMMANDS: dict[str, str] = {
    "server": "run the control plane (sessions API, agent loop, work queue, tunnel edge)",
    "worker": "run an environment worker: poll the control plane, run tools sandboxed",
    "gateway": "run a tunnel gateway that carries MCP traffic into a private network",
    "sandbox": "run one command in the OS sandbox (srt-compatible settings)",
    "audit": "verify hash-chained audit logs",
    "demo": "start a server, a worker and a session on this machine and show the transcript",
}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"inwall.cli.{name}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inwall", description="Agents whose hands stay inside your walls.")
    parser.add_argument("--version", action="version", version=f"inwall {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_ in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or only == name:
            _module(name).configure(p)
    return parser


def _version() -> str:
    from inwall import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(args_list)
    result: int = _module(args.command).run(args)
    return result


def run() -> None:
    """Console-script shim: exit with ``main``'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
