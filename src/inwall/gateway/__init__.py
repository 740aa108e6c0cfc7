"""The tunnel gateway: routes MCP traffic from the tunnel to private servers, behind a perimeter policy.

Gateway          the ASGI app (Host → route → perimeter → HTTP upstream or stdio bridge)
GatewayProgram   N tunnel connections around one Gateway, backoff, auth-failure stop, drain
load_config      strict TOML config with line-precise errors
CallerIdentity   verifies the control plane's signed caller identity per tools/call ([identity])
Decider          the policy seam: ToolListDecider (allow/deny lists) and CedarDecider ([policy]),
                 combined with AllOf
PerimeterPolicy  the sans-I/O core: reads requests, decides, filters listings, redacts results

Perimeter Cedar policies name tools by their **upstream MCP name** and the
gateway route as ``resource.mcp_server``; unsigned calls are the anonymous
principal ``Inwall::User::"anonymous"`` (``principal.kind == "anonymous"``).
See :mod:`inwall.gateway.cedar`.
"""

from inwall.gateway.app import Gateway
from inwall.gateway.backoff import FullJitterBackoff
from inwall.gateway.cedar import ANONYMOUS, AllOf, CedarDecider
from inwall.gateway.certs import CertificateFiles, create_certificates
from inwall.gateway.config import (
    ConfigProblem,
    GatewayConfig,
    GatewayConfigError,
    HttpRoute,
    IdentityConfig,
    PolicyConfig,
    StdioRoute,
    load_config,
    parse_config,
)
from inwall.gateway.identity import IDENTITY_HEADER, IDENTITY_META_KEY, LISTING_TOOL, CallerIdentity
from inwall.gateway.mcp_policy import (
    IDENTITY_REFUSED,
    Decider,
    Decision,
    PerimeterPolicy,
    ToolListDecider,
    ToolRule,
)
from inwall.gateway.netguard import ForbiddenUpstream
from inwall.gateway.perimeter import AuditSink
from inwall.gateway.program import GatewayProgram

__all__ = [
    "ANONYMOUS",
    "IDENTITY_HEADER",
    "IDENTITY_META_KEY",
    "IDENTITY_REFUSED",
    "LISTING_TOOL",
    "AllOf",
    "AuditSink",
    "CallerIdentity",
    "CedarDecider",
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
    "IdentityConfig",
    "PerimeterPolicy",
    "PolicyConfig",
    "StdioRoute",
    "ToolListDecider",
    "ToolRule",
    "create_certificates",
    "load_config",
    "parse_config",
]
