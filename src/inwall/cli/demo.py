"""`inwall demo [--json]`: run the whole product locally and show a live transcript."""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with one JSON object describing the session")
    parser.add_argument(
        "--model",
        help="model id (default: Claude when ANTHROPIC_API_KEY is set, otherwise the scripted model)",
    )

    parser.add_argument(
        "--unsandboxed",
        action="store_true",
        help="use the SDK's stock worker instead of inwall worker (for hosts that cannot sandbox; tools then "
        "run unrestricted on this machine)",
    )


def run(args: argparse.Namespace) -> int:
    from inwall.demo.run import main

    return main(as_json=args.json, model=args.model, unsandboxed=args.unsandboxed)
