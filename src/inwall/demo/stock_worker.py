"""The SDK's stock ``EnvironmentWorker`` as a child process (the unsandboxed reference worker).

``inwall worker`` is the sandboxed one; this exists so the demo and the
compatibility tests can show that an unmodified SDK worker serves inwall.
Configuration comes from the same environment variables the SDK documents.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import anyio
from anthropic import AsyncAnthropic
from anthropic.lib.environments import EnvironmentWorker


async def _main(workdir: str) -> None:
    key = os.environ["ANTHROPIC_ENVIRONMENT_KEY"]
    async with AsyncAnthropic(
        base_url=os.environ["ANTHROPIC_BASE_URL"], auth_token=key, api_key=None
    ) as client:
        worker = EnvironmentWorker(
            client,
            environment_id=os.environ["ANTHROPIC_ENVIRONMENT_ID"],
            environment_key=key,
            workdir=workdir,
            max_idle=float(os.environ.get("INWALL_WORKER_MAX_IDLE", "60")),
        )
        await worker.run()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(_main, sys.argv[1])
