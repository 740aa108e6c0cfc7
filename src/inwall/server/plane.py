"""The control plane as one object: open it, run it, close it.

``ControlPlane`` owns the database, the bus, every domain service and the
background tasks (the turn engine and the lease reaper) in one task group, so
tests can run a whole server in-process with ``async with ControlPlane(...)``
and the ``inwall server`` command is a thin shell around the same object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2

from inwall.agent.engine import Engine
from inwall.agent.gate import PolicyGate
from inwall.agent.models.registry import ProviderRegistry, ProviderSettings
from inwall.agent.runner import RunnerDeps
from inwall.control.agents import AgentService
from inwall.control.auditlog import ControlAudit
from inwall.control.auth import KeyStore, SessionTokens
from inwall.control.bus import EventBus
from inwall.control.environments import EnvironmentService
from inwall.control.events import EventLog
from inwall.control.sessions import SessionService
from inwall.control.tunnels import TunnelService
from inwall.control.users import UserService
from inwall.control.work import WorkQueue
from inwall.errors import ConfigError
from inwall.governance import IdentityIssuer, IdentityKeys, OidcValidator, PolicyEngine, PolicyFile
from inwall.ids import now, rfc3339
from inwall.mcp.credentials import McpCredentials
from inwall.mcp.pool import McpPool
from inwall.server.settings import ServerSettings
from inwall.store.db import Database, sqlite_url
from inwall.tunnel.edge import TunnelEdge

__all__ = ["ControlPlane", "load_or_create_secret"]

log = logging.getLogger("inwall.server")


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """A random key kept in the data directory (mode 0600), created on first start."""
    if path.exists():
        data = path.read_bytes()
        if len(data) < 16:
            raise ConfigError(f"{path} is too short to be a key; delete it to generate a new one")
        return data
    data = secrets.token_bytes(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data


def _lock_data_dir(data_dir: Path) -> int:
    """One server per embedded database: a second process on the same data dir would race it."""
    import fcntl

    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"another inwall server is already using {data_dir}; stop it first, or use PostgreSQL "
            "(--database-url) to run several servers"
        ) from None
    return fd


class ControlPlane:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        self.server_key = load_or_create_secret(data_dir / "server_key")
        self.db = Database(settings.database_url or sqlite_url(data_dir))
        self._lock_fd = _lock_data_dir(data_dir) if self.db.is_sqlite else None
        self.bus = EventBus()
        self.events = EventLog(self.db, self.bus)
        self.tokens = SessionTokens(self.server_key)
        self.keys = KeyStore(self.db, self.tokens)
        self.users = UserService(self.db, self.keys)
        self.agents = AgentService(self.db)
        self.environments = EnvironmentService(self.db, on_keys_removed=self.keys.forget_cache)
        self.work = WorkQueue(
            self.db,
            self.events,
            self.tokens,
            lease_ttl_s=settings.lease_ttl_s,
            reap_interval_s=settings.reap_interval_s,
        )
        self.audit = ControlAudit(self.db)
        self.sessions = SessionService(
            self.db, self.events, self.work, self.agents, self.environments, audit=self.audit
        )
        self.providers = ProviderRegistry()
        self.provider_settings = ProviderSettings(
            anthropic_base_url=settings.anthropic_base_url, openai_base_url=settings.openai_base_url
        )
        self.tunnels = TunnelService(
            self.db,
            self.server_key,
            domain_suffix=settings.tunnel_domain_suffix,
            rotation_grace_s=settings.tunnel_rotation_grace_s,
        )
        self.edge = TunnelEdge(self.tunnels, connect_wait_s=settings.tunnel_connect_wait_s)
        self.tunnels.on_revoke = lambda tunnel_id, token_id, grace: self.edge.revoke_token(
            tunnel_id, token_id, grace_s=grace
        )
        self.tunnels.on_archive = lambda tunnel_id, reason: self.edge.disconnect_tunnel(
            tunnel_id, reason=reason
        )
        # MCP traffic: hosts under a tunnel domain go through the tunnel and nowhere
        # else; every other host is reached directly.
        self.mcp = McpPool(
            transport_factory=lambda: self.edge.transport(fallback=httpx2.AsyncHTTPTransport())
        )
        self.mcp_credentials = (
            McpCredentials.load(settings.mcp_credentials_file)
            if settings.mcp_credentials_file
            else McpCredentials()
        )
        self.identity_keys = IdentityKeys.load_or_create(data_dir)
        self.identity_issuer = IdentityIssuer(self.identity_keys.private_key)
        self.policy_status: dict[str, Any] = {
            "source": str(settings.policy_file) if settings.policy_file else None,
            "loaded_at": None,
            "last_error": None,
            "last_error_at": None,
        }
        self.policy_file = (
            PolicyFile(settings.policy_file, on_error=self._policy_rejected, on_reload=self._policy_loaded)
            if settings.policy_file
            else None
        )
        if self.policy_file is not None:
            self.policy_status["loaded_at"] = rfc3339(now())
        self._open_policy = PolicyEngine(None)
        self.gate = PolicyGate(self.db, self.policy_engine, tunnel_of=self.tunnels.tunnel_id_for_url)
        self.oidc = (
            OidcValidator(
                settings.oidc_issuer,
                settings.oidc_audience or "",
                jwks_url=settings.oidc_jwks_url,
                roles_claim=settings.oidc_roles_claim,
            )
            if settings.oidc_issuer
            else None
        )
        self.engine = Engine(
            RunnerDeps(
                db=self.db,
                log=self.events,
                work=self.work,
                providers=lambda model_id: self.providers.provider_for(model_id, self.provider_settings),
                mcp=self.mcp,
                settings=settings.runner,
                resolve_mcp=self.mcp_credentials.resolve,
                audit=self.audit,
                gate=self.gate,
                issuer=self.identity_issuer,
                tunnel_of=self.tunnels.tunnel_id_for_url,
            )
        )
        self.admin_key_path = data_dir / "admin_key"
        self.ready = False

    def _policy_rejected(self, message: str) -> None:
        log.error("policy file rejected; the previous policy stays in force: %s", message)
        self.policy_status.update(last_error=message, last_error_at=rfc3339(now()))

    def _policy_loaded(self, engine: PolicyEngine) -> None:
        log.info("policy reloaded: %s", engine.describe())
        self.policy_status.update(loaded_at=rfc3339(now()), last_error=None, last_error_at=None)

    def policy_engine(self) -> PolicyEngine:
        return self.policy_file.engine if self.policy_file is not None else self._open_policy

    async def bootstrap_admin_key(self) -> None:
        """Ensure an admin key exists. It is written to ``DATA_DIR/admin_key`` (0600), never printed."""
        supplied = os.environ.get("INWALL_ADMIN_KEY")
        if supplied:
            if not await self.keys.exists(supplied):
                await self.keys.create("admin", plaintext=supplied)
            return
        if self.admin_key_path.exists():
            key = self.admin_key_path.read_text().strip()
            if key and not await self.keys.exists(key):
                await self.keys.create("admin", plaintext=key)
            return
        _, key = await self.keys.create("admin")
        fd = os.open(self.admin_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        log.info("created the admin API key; it is in %s (mode 0600)", self.admin_key_path)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ControlPlane]:
        """Migrate, bootstrap, start background tasks; on exit stop them and close everything."""
        await self.db.migrate()
        await self.bootstrap_admin_key()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.edge.run)
                await tg.start(self.mcp.run)
                await tg.start(self.engine.run)
                tg.start_soon(self.work.run_reaper)
                if self.policy_file is not None:
                    tg.start_soon(self.policy_file.watch, 1.0)
                log.info("tool governance: %s", self.policy_engine().describe())
                self.ready = True
                try:
                    yield self
                finally:
                    self.ready = False
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.mcp.aclose()
                await self.providers.aclose_all()
                await self.db.aclose()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
