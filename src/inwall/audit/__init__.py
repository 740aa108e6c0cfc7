"""Append-only, hash-chained audit logs shared by the worker, gateway and control plane."""

from inwall.audit.chain import GENESIS, Problem, Report, canonical_json, seal, verify_lines
from inwall.audit.log import AuditLog, verify_file

__all__ = [
    "GENESIS",
    "AuditLog",
    "Problem",
    "Report",
    "canonical_json",
    "seal",
    "verify_file",
    "verify_lines",
]
