"""`inwall worker`: serve a self-hosted environment's sessions with every tool sandboxed.

A thin shell over :mod:`inwall.worker.program` (which also offers
``run_worker(config)`` and ``main(argv)`` to programs and tests).
"""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    from inwall.worker.program import configure as _configure

    _configure(parser)


def run(args: argparse.Namespace) -> int:
    from inwall.worker.program import run as _run

    return _run(args)
