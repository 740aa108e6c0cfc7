"""`inwall gateway [run|validate|certs]`: the tunnel gateway, its config check, its inner-TLS certificates.

    inwall gateway --base-url URL --tunnel-token TOKEN --config gateway.toml
    inwall gateway validate --config gateway.toml
    inwall gateway certs --domain DOMAIN --out DIR

The token may also come from ``--tunnel-token-file`` or ``INWALL_TUNNEL_TOKEN``
(preferred: a command line is visible to every user of the host). It is never
printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
from pathlib import Path

import anyio

from inwall.audit import AuditLog
from inwall.errors import AuthError, ConfigError
from inwall.gateway.certs import create_certificates
from inwall.gateway.config import GatewayConfigError, load_config
from inwall.gateway.program import GatewayProgram
from inwall.governance import PolicyFile

__all__ = ["configure", "run"]

EXIT_CONFIG = 2
EXIT_AUTH = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        nargs="?",
        choices=("run", "validate", "certs"),
        default="run",
        help="run the gateway (default), validate a config (no network), or create inner-TLS certificates",
    )
    parser.add_argument("--config", metavar="FILE", help="gateway config (TOML)")
    parser.add_argument(
        "--base-url", metavar="URL", help="the inwall server, e.g. https://inwall.example.com"
    )
    parser.add_argument(
        "--tunnel-token", metavar="TOKEN", help="tunnel token (default: $INWALL_TUNNEL_TOKEN)"
    )
    parser.add_argument("--tunnel-token-file", metavar="FILE", help="read the tunnel token from FILE")
    parser.add_argument("--ca-file", metavar="FILE", help="CA bundle to verify the server's (outer) TLS")
    parser.add_argument(
        "--allow-insecure-ws",
        action="store_true",
        help="allow a plain ws:// base URL that is not on loopback (the token travels unencrypted)",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument(
        "--domain", help="certs: the tunnel's domain (the server certificate names it and *.domain)"
    )
    parser.add_argument(
        "--out", metavar="DIR", help="certs: directory for ca.pem, ca-key.pem, server.pem, server-key.pem"
    )
    parser.add_argument(
        "--days", type=int, default=365, help="certs: server certificate lifetime (default 365)"
    )
    parser.add_argument("--force", action="store_true", help="certs: also replace an existing CA")


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "validate":
            return _validate(args)
        if args.action == "certs":
            return _certs(args)
        return _run(args)
    except ConfigError as exc:
        print(f"inwall gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _validate(args: argparse.Namespace) -> int:
    if not args.config:
        print("inwall gateway validate: --config FILE is required", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config = load_config(args.config, check_files=True)
    except GatewayConfigError as exc:
        for problem in exc.problems:
            print(problem.render(exc.source), file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    for name, route in sorted(config.routes.items()):
        print(f"  {name}: {route.upstream}{_rules(route.allow_tools, route.deny_tools)}")
    for name, stdio in sorted(config.stdio.items()):
        print(f"  {name}: stdio {' '.join(stdio.command)}{_rules(stdio.allow_tools, stdio.deny_tools)}")
    print(f"  allowed_ips: {', '.join(str(n) for n in config.allowed_ips)}")
    if config.identity is not None:
        need = "required" if config.identity.required else "optional (unsigned calls are anonymous)"
        print(
            f"  identity: audience {config.identity.audience}, key {config.identity.public_key_file}, {need}"
        )
    if config.policy is not None:
        print(f"  policy: perimeter {PolicyFile(config.policy.file).engine.describe()}")
    if config.redactor is not None:
        off = sorted(set(config.route_names()) - config.redacted_routes())
        print(
            f"  redact: {', '.join(config.redactor.names)}" + (f" (not on {', '.join(off)})" if off else "")
        )
    return 0


def _rules(allow: frozenset[str] | None, deny: frozenset[str]) -> str:
    out = ""
    if allow is not None:
        out += f" allow={sorted(allow)}"
    if deny:
        out += f" deny={sorted(deny)}"
    return out


def _certs(args: argparse.Namespace) -> int:
    if not args.domain or not args.out:
        print("inwall gateway certs: --domain DOMAIN and --out DIR are required", file=sys.stderr)
        return EXIT_CONFIG
    files = create_certificates(args.domain, args.out, days=args.days, force=args.force)
    if files.ca_created:
        print(f"created CA {files.ca_cert} (key {files.ca_key}: keep it offline)", file=sys.stderr)
    else:
        print(f"kept the existing CA {files.ca_cert}", file=sys.stderr)
    print(f"server certificate {files.server_cert}, key {files.server_key}", file=sys.stderr)
    print(
        f"[tls] cert_file = {str(files.server_cert)!r}, key_file = {str(files.server_key)!r}", file=sys.stderr
    )
    print("register the CA on the tunnel (POST /v1/tunnels/{id}/certificates):", file=sys.stderr)
    print(files.ca_cert)
    return 0


def _token(args: argparse.Namespace) -> str:
    if args.tunnel_token:
        return str(args.tunnel_token).strip()
    if args.tunnel_token_file:
        try:
            return Path(args.tunnel_token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--tunnel-token-file: cannot read: {exc.strerror}") from exc
    return os.environ.get("INWALL_TUNNEL_TOKEN", "").strip()


def _run(args: argparse.Namespace) -> int:
    if not args.config or not args.base_url:
        print("inwall gateway: --config FILE and --base-url URL are required", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_config(args.config, check_files=True)
    except GatewayConfigError as exc:
        for problem in exc.problems:
            print(problem.render(exc.source), file=sys.stderr)
        return EXIT_CONFIG
    key = config.audit_key_file.read_bytes().strip() if config.audit_key_file else None
    client_ssl = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    with AuditLog(config.audit_log, key=key) as audit:
        program = GatewayProgram(
            config,
            base_url=args.base_url,
            token=_token(args),
            audit=audit,
            client_ssl=client_ssl,
            allow_insecure_ws=args.allow_insecure_ws,
        )
        try:
            anyio.run(_main, program)
        except AuthError as exc:
            print(
                f"inwall gateway: the server refused the tunnel token ({exc}); not retrying", file=sys.stderr
            )
            return EXIT_AUTH
        except KeyboardInterrupt:
            return 130
    return 0


async def _main(program: GatewayProgram) -> None:
    await program.run(handle_signals=True)
