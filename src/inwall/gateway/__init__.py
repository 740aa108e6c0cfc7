"""The tunnel gateway: routes MCP traffic from the tunnel to private servers, behind a perimeter policy.

Gateway          the ASGI app (Host → route → perimeter → HTTP upstream or stdio bridge)
GatewayProgram   N tunnel connections around one Gateway, backoff, auth-failure stop, drain
load_config      strict TOML config with line-precise errors
Decider          the policy seam (today ToolListDecider; Cedar and signed identity later)
"""

from inwall.gateway.app import Gateway
from inwall.gateway.backoff import FullJitterBackoff
from inwall.gateway.certs import CertificateFiles, create_certificates
from inwall.gateway.config import (
    ConfigProblem,
    GatewayConfig,
    GatewayConfigError,
    HttpRoute,
    StdioRoute,
    load_config,
    parse_config,
)
from inwall.gateway.mcp_policy import (
    Decider,
    Decision,
    IdentityVerifier,
    NoIdentity,
    PerimeterPolicy,
    ToolListDecider,
    ToolRule,
)
from inwall.gateway.netguard import ForbiddenUpstream
from inwall.gateway.perimeter import AuditSink
from inwall.gateway.program import GatewayProgram

__all__ = [
    "AuditSink",
    "CertificateFiles",
    "ConfigProblem",
    "Decider",
    "Decision",
    "ForbiddenUpstream",
    "FullJitterBackoff",
    "Gateway",
    "GatewayConfig",
    "GatewayConfigError",
    "GatewayProgram",
    "HttpRoute",
    "IdentityVerifier",
    "NoIdentity",
    "PerimeterPolicy",
    "StdioRoute",
    "ToolListDecider",
    "ToolRule",
    "create_certificates",
    "load_config",
    "parse_config",
]
