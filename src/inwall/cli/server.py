"""`inwall server --data-dir DIR [--host 127.0.0.1] [--port 8700]`: run the control plane."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", required=True, type=Path, help="where the database and keys live (created 0700)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8700, help="port to listen on (default 8700; 0 picks a free one)"
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy async URL, e.g. postgresql+asyncpg://... (default: SQLite in the data dir; "
        "also $INWALL_DATABASE_URL)",
    )
    parser.add_argument("--policy", type=Path, help="Cedar policy file for tool governance (hot-reloaded)")
    parser.add_argument(
        "--mcp-credentials",
        type=Path,
        help="TOML file mapping MCP server URL prefixes to static bearer credentials",
    )
    parser.add_argument(
        "--oidc-issuer", help="accept end-user OIDC ID tokens from this issuer (e.g. Entra ID, Google)"
    )
    parser.add_argument("--oidc-audience", help="the audience (client id) those ID tokens must carry")
    parser.add_argument("--oidc-jwks-url", help="JWKS URL (default: discovered from the issuer)")
    parser.add_argument("--oidc-roles-claim", default="groups", help="claim holding the end user's roles")
    parser.add_argument("--lease-ttl", type=int, help="work-item lease TTL in seconds (default 30)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import anyio

    from inwall.errors import InwallError
    from inwall.server.serve import serve
    from inwall.server.settings import ServerSettings

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = ServerSettings.from_env(
        args.data_dir.resolve(),
        host=args.host,
        port=args.port,
        database_url=args.database_url,
        policy_file=args.policy,
        mcp_credentials_file=args.mcp_credentials,
        oidc_issuer=args.oidc_issuer,
        oidc_audience=args.oidc_audience,
        oidc_jwks_url=args.oidc_jwks_url,
        oidc_roles_claim=args.oidc_roles_claim,
        lease_ttl_s=args.lease_ttl,
        log_level=args.log_level,
    )

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            bound = await tg.start(
                lambda task_status: serve(settings, install_signal_handlers=True, task_status=task_status)
            )
            logging.getLogger("inwall.server").info("inwall server ready on %s", bound.base_url)

    try:
        anyio.run(main, backend_options={"use_uvloop": _has_uvloop()})
    except InwallError as exc:
        print(f"inwall server: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _has_uvloop() -> bool:
    """uvloop roughly halves the event loop's share of a tool call's round trip; optional."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
