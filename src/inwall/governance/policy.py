"""Cedar tool governance, sans-I/O: may this caller call this tool with this input?

The model (see ``schema.cedarschema``):

- principal ``Inwall::User::"<user id>"``, a member of ``Inwall::Role::"<role>"``
  for each role, with ``name``, ``kind`` and ``claims`` (the token's claims);
- action ``Inwall::Action::"call_tool"``, used for calling and for listing;
- resource ``Inwall::Tool::"<name the model sees>"`` with ``kind``,
  ``mcp_server`` and ``tunnel`` (``""`` when they do not apply);
- context ``{input, session_id, environment_id}``, ``input`` being the tool
  input converted as ``_cedar_values`` documents.

Cedar denies unless a ``permit`` applies and no ``forbid`` does. One rule is
added on top, because Cedar skips a policy whose evaluation errors and that
would make a ``forbid`` fail open (a model passing ``{"command": 5}`` where a
policy says ``context.input.command like "*rm*"``): **a forbid that errors
denies**, and so does a request Cedar cannot evaluate at all.

:meth:`PolicyEngine.visible` decides the tool list with Cedar partial
evaluation, the input left unknown: a tool is hidden when the answer is Deny
whatever the input is (no permit can apply, or a forbid applies regardless),
and shown when it is Allow or depends on the input. Partial evaluation only
previews; every call is still decided in full by :meth:`PolicyEngine.decide`.

Error strings in a :class:`Decision` never quote input values: only the first
clause of Cedar's message is kept (the rest may quote the value, as in
"invalid IP address: <value>"), and anything in backticks that is not a plain
name becomes ``…``.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import cedarpy

from inwall.governance._cedar_values import to_cedar_record
from inwall.governance._policy_text import (
    Statement,
    locate_in_statement,
    locate_syntax_error,
    split_statements,
)
from inwall.governance.errors import PolicyError, PolicyProblem
from inwall.governance.model import Identity, ToolRef

__all__ = [
    "ACTION_CALL_TOOL",
    "DENIAL_TEXT",
    "Decision",
    "PolicyEngine",
    "PolicyInfo",
    "PolicySet",
    "schema_text",
]

NAMESPACE: Final = "Inwall"
ACTION_CALL_TOOL: Final = f'{NAMESPACE}::Action::"call_tool"'
DENIAL_TEXT: Final = "The tool call was denied by policy."
"""All a model is told about a denial: nothing about which policy, and nothing about other tools."""

_USER: Final = f"{NAMESPACE}::User"
_ROLE: Final = f"{NAMESPACE}::Role"
_TOOL: Final = f"{NAMESPACE}::Tool"
_ACTION_UID: Final = {"type": f"{NAMESPACE}::Action", "id": "call_tool"}
_POLICY_REF = re.compile(r"policy `(policy\d+)`")
_VALIDATION_PREFIX = re.compile(r"^for policy `policy\d+`,\s*")
_EVAL_PREFIX = re.compile(r"^error while evaluating policy `policy\d+`:\s*")
_QUOTED = re.compile(r"`([^`]*)`")
_OPEN_RECORD_MISS = re.compile(r"attribute `(?:input|claims)\.[^`]*`.* not found")
_OPEN_RECORD_HINT: Final = (
    "tool inputs and token claims have no fixed attributes: guard each access with `has`, "
    'e.g. `context.input has command && context.input.command like "*rm*"`'
)
_ESCAPES: Final = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", "'": "\\'", '"': '\\"'}
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:(?:::|\.)[A-Za-z_][A-Za-z0-9_]*)*")


@functools.cache
def schema_text() -> str:
    """The Cedar schema policies are validated against (shipped as ``schema.cedarschema``)."""
    return importlib.resources.files(__package__).joinpath("schema.cedarschema").read_text(encoding="utf-8")


@functools.cache
def _schema() -> cedarpy.Schema:
    return cedarpy.Schema.from_str(schema_text())


def _parse_error(text: str) -> str | None:
    try:
        cedarpy.PolicySet.from_str(text)
    except ValueError as exc:
        return str(exc)
    return None


def _scrub(message: str) -> str:
    """Keep names, drop values: Cedar quotes both in backticks."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group(1)
        return match.group(0) if _PLAIN_NAME.fullmatch(inner) else "`…`"

    return _QUOTED.sub(keep, message)


@dataclass(frozen=True)
class PolicyInfo:
    """One policy of a set: ``id`` is its ``@id`` annotation, else Cedar's ``policyN``."""

    id: str
    cedar_id: str
    effect: str  # "permit" | "forbid"
    line: int


@dataclass(frozen=True)
class Decision:
    """``reasons``: ids of the policies that determined the answer; ``errors``: scrubbed evaluation errors."""

    allowed: bool
    reasons: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()


class PolicySet:
    """A parsed, schema-validated Cedar policy file. Build with :meth:`parse`."""

    def __init__(self, *, source: str, text: str, cedar: cedarpy.PolicySet, policies: tuple[PolicyInfo, ...]):
        self.source = source
        self.text = text
        self.cedar = cedar
        self.policies = policies
        self._by_cedar_id = {p.cedar_id: p for p in policies}

    def __len__(self) -> int:
        return len(self.policies)

    def __repr__(self) -> str:
        return f"<PolicySet {self.source!r}: {len(self.policies)} policies>"

    def info(self, cedar_id: str) -> PolicyInfo | None:
        return self._by_cedar_id.get(cedar_id)

    def public_id(self, cedar_id: str) -> str:
        info = self._by_cedar_id.get(cedar_id)
        return info.id if info else cedar_id

    @classmethod
    def parse(cls, text: str, *, source: str) -> PolicySet:
        """Parse and validate; raise :class:`PolicyError` naming ``source:line`` for each problem."""
        statements = split_statements(text)
        try:
            cedar = cedarpy.PolicySet.from_str(text)
        except ValueError as exc:
            raise PolicyError(source, (_locate_parse_error(statements, str(exc)),)) from exc

        est = json.loads(cedarpy.policies_to_json_str(text))
        static: Mapping[str, Any] = est.get("staticPolicies") or {}
        aligned = len(statements) == len(static) + len(est.get("templates") or {})

        def line_of(cedar_id: str) -> int:
            index = int(cedar_id.removeprefix("policy")) if re.fullmatch(r"policy\d+", cedar_id) else -1
            return statements[index].line if aligned and 0 <= index < len(statements) else 0

        problems: list[PolicyProblem] = []
        for cedar_id in est.get("templates") or {}:
            problems.append(
                PolicyProblem(line_of(cedar_id), "templates (?principal, ?resource) are not supported")
            )

        infos: list[PolicyInfo] = []
        seen: dict[str, int] = {}
        for cedar_id, body in static.items():
            annotations = body.get("annotations") or {}
            public = annotations.get("id") or cedar_id
            line = line_of(cedar_id)
            if public in seen:
                problems.append(
                    PolicyProblem(
                        line, f"policy id {public!r} is already used at line {seen[public]}", public
                    )
                )
            seen.setdefault(public, line)
            infos.append(PolicyInfo(public, cedar_id, str(body.get("effect")), line))
        by_cedar_id = {info.cedar_id: info for info in infos}

        result = cedarpy.validate_policies(text, _schema())
        for error in result.errors:
            info = by_cedar_id.get(error.policy_id)
            message = _VALIDATION_PREFIX.sub("", error.error)
            if info is None:
                problems.append(PolicyProblem(0, message))
                continue
            line = info.line
            if aligned and info.line:
                line = locate_in_statement(statements[int(info.cedar_id.removeprefix("policy"))], message)
            if _OPEN_RECORD_MISS.search(message):
                message += f" ({_OPEN_RECORD_HINT})"
            problems.append(PolicyProblem(line, f"policy {info.id}: {message}", info.id))
        if problems:
            problems.sort(key=lambda p: p.line)
            raise PolicyError(source, tuple(problems))
        ordered = tuple(sorted(infos, key=lambda p: int(p.cedar_id.removeprefix("policy"))))
        return cls(source=source, text=text, cedar=cedar, policies=ordered)


def _locate_parse_error(statements: Sequence[Statement], message: str) -> PolicyProblem:
    for statement in statements:
        error = _parse_error(statement.text)
        if error is None:
            continue
        line = locate_syntax_error(statement, _parse_error)
        if error == "unexpected end of input" and not statement.complete:
            error = "unexpected end of input (missing `;`?)"
        return PolicyProblem(line, error)
    return PolicyProblem(0, message)


def _entity_uid_text(type_: str, id_: str) -> str:
    """Cedar syntax for an entity uid; partial evaluation accepts only this form.

    Cedar accepts a uid only in its normal form, which escapes as Rust's
    ``escape_debug`` does. Python's idea of "printable" matches it for all but
    a few code points; for those, :meth:`PolicyEngine.visible` falls back.
    """
    out: list[str] = []
    for index, char in enumerate(id_):
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif not char.isprintable() or (index == 0 and unicodedata.category(char) in ("Mn", "Me")):
            out.append(f"\\u{{{ord(char):x}}}")
        else:
            out.append(char)
    return f'{type_}::"{"".join(out)}"'


def _principal_entities(principal: Identity) -> list[dict[str, Any]]:
    user = {
        "uid": {"type": _USER, "id": principal.user_id},
        "attrs": {
            "name": principal.name,
            "kind": principal.kind,
            "claims": to_cedar_record(principal.claims),
        },
        "parents": [{"type": _ROLE, "id": role} for role in dict.fromkeys(principal.roles)],
    }
    roles = [
        {"uid": {"type": _ROLE, "id": role}, "attrs": {}, "parents": []}
        for role in dict.fromkeys(principal.roles)
    ]
    return [user, *roles]


def _tool_entity(tool: ToolRef) -> dict[str, Any]:
    return {
        "uid": {"type": _TOOL, "id": tool.name},
        "attrs": {"kind": tool.kind, "mcp_server": tool.mcp_server, "tunnel": tool.tunnel},
        "parents": [],
    }


class PolicyEngine:
    """Decides tool calls with a :class:`PolicySet`; ``None`` allows everything (no ``--policy``)."""

    def __init__(self, policies: PolicySet | None) -> None:
        self._policies = policies

    @property
    def policies(self) -> PolicySet | None:
        return self._policies

    def describe(self) -> str:
        """One line for the startup log, so an operator sees whether tools are governed."""
        if self._policies is None:
            return "tool governance: no policy file (--policy), so every tool call is allowed"
        infos = self._policies.policies
        permits = sum(1 for p in infos if p.effect == "permit")
        return (
            f"tool governance: Cedar policy {self._policies.source} with {len(infos)} policies "
            f"({permits} permit, {len(infos) - permits} forbid); anything not permitted is denied"
        )

    def decide(
        self,
        principal: Identity,
        tool: ToolRef,
        input: Mapping[str, Any],
        *,
        session_id: str = "",
        environment_id: str = "",
    ) -> Decision:
        policies = self._policies
        if policies is None:
            return Decision(True)
        request = {
            "principal": {"type": _USER, "id": principal.user_id},
            "action": _ACTION_UID,
            "resource": {"type": _TOOL, "id": tool.name},
            "context": {
                "input": to_cedar_record(input),
                "session_id": session_id,
                "environment_id": environment_id,
            },
        }
        entities = [*_principal_entities(principal), _tool_entity(tool)]
        result = cedarpy.is_authorized(request, policies.cedar, entities)
        return self._judge(policies, result.decision, result.diagnostics.reasons, result.diagnostics.errors)

    def visible(self, principal: Identity, tools: Sequence[ToolRef]) -> list[ToolRef]:
        """The tools the caller may call with some input; see the module docstring for how."""
        policies = self._policies
        if policies is None:
            return list(tools)
        base = _principal_entities(principal)
        principal_text = _entity_uid_text(_USER, principal.user_id)
        shown: list[ToolRef] = []
        for tool in tools:
            entities = [*base, _tool_entity(tool)]
            request = {
                "principal": principal_text,
                "action": ACTION_CALL_TOOL,
                "resource": _entity_uid_text(_TOOL, tool.name),
                "context": None,
            }
            partial = cedarpy.is_authorized_partial(request, policies.cedar, entities)
            errors = partial.diagnostics.errors
            if partial.decision == cedarpy.Decision.Deny:
                continue
            if errors and not any(_POLICY_REF.search(e) for e in errors):
                # Cedar could not even state the request (an id its syntax cannot
                # express): fall back to a full decision on an empty input.
                if self.decide(principal, tool, {}).allowed:
                    shown.append(tool)
                continue
            if self._forbid_errors(policies, errors):
                continue
            shown.append(tool)
        return shown

    @staticmethod
    def _forbid_errors(policies: PolicySet, errors: Sequence[str]) -> list[str]:
        """Ids of forbid policies that errored; an error naming no policy counts as one."""
        failed: list[str] = []
        for error in errors:
            match = _POLICY_REF.search(error)
            if match is None:
                failed.append("")
                continue
            info = policies.info(match.group(1))
            if info is None or info.effect != "permit":
                failed.append(match.group(1))
        return failed

    def _judge(
        self, policies: PolicySet, decision: cedarpy.Decision, reasons: Sequence[str], errors: Sequence[str]
    ) -> Decision:
        scrubbed = tuple(self._describe_error(policies, e) for e in errors)
        failed_forbids = self._forbid_errors(policies, errors)
        if decision == cedarpy.Decision.Allow and not failed_forbids:
            return Decision(True, tuple(policies.public_id(r) for r in reasons), scrubbed)
        if decision in (cedarpy.Decision.Allow, cedarpy.Decision.NoDecision):
            # Fail closed: a forbid that could not be evaluated might have applied.
            return Decision(False, tuple(policies.public_id(r) for r in failed_forbids if r), scrubbed)
        return Decision(False, tuple(policies.public_id(r) for r in reasons), scrubbed)

    @staticmethod
    def _describe_error(policies: PolicySet, error: str) -> str:
        match = _POLICY_REF.search(error)
        if match is None:
            head = error.split(":", 1)[0].strip()
            return f"evaluation failed: {_scrub(head)}"
        detail = _EVAL_PREFIX.sub("", error).split(": ", 1)[0]
        return f"policy {policies.public_id(match.group(1))}: {_scrub(detail)}"
