"""Run the control plane under uvicorn, in-process and cancellable.

``serve`` is what ``inwall server`` runs and what tests ``await tg.start(...)``:
it reports the bound address through ``task_status`` once the HTTP server
accepts connections, and on cancellation (or SIGTERM, in the CLI) it stops
accepting, lets in-flight requests finish, then stops the background tasks.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from dataclasses import dataclass

import anyio
import uvicorn

from inwall.api.app import build_app
from inwall.errors import Unavailable
from inwall.server.plane import ControlPlane
from inwall.server.settings import ServerSettings

__all__ = ["Bound", "serve"]


@dataclass(frozen=True)
class Bound:
    host: str
    port: int
    plane: ControlPlane

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, *, signals: bool) -> None:
        super().__init__(config)
        self.up = anyio.Event()
        self._signals = signals

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self._signals:
            with super().capture_signals():
                yield
        else:
            yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def serve(
    settings: ServerSettings,
    *,
    install_signal_handlers: bool = False,
    task_status: anyio.abc.TaskStatus[Bound] = anyio.TASK_STATUS_IGNORED,
) -> None:
    plane = ControlPlane(settings)
    sock = _bind(settings.host, settings.port)
    try:
        async with plane.running():
            config = uvicorn.Config(
                build_app(plane),
                log_level=settings.log_level,
                lifespan="off",
                ws="websockets-sansio",
                ws_max_size=16 * 1024 * 1024,
                timeout_graceful_shutdown=10,
                access_log=False,
                server_header=False,
                proxy_headers=False,
            )
            server = _Server(config, signals=install_signal_handlers)
            stopped = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    # Shielded: uvicorn must get to close its connections; it stops when
                    # should_exit is set (by a signal, or by our own cancellation below).
                    with anyio.CancelScope(shield=True):
                        try:
                            await server.serve(sockets=[sock])
                        finally:
                            stopped.set()
                            server.up.set()
                    tg.cancel_scope.cancel()

                tg.start_soon(run)
                await server.up.wait()
                if stopped.is_set():
                    raise Unavailable("the HTTP server stopped during start-up; see the log above")
                host, port = sock.getsockname()[:2]
                task_status.started(Bound(host, port, plane))
                try:
                    await anyio.sleep_forever()
                finally:
                    server.should_exit = True
                    plane.bus.close_all()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(15):
                        await stopped.wait()
    finally:
        sock.close()
