"""Cedar tool governance: decisions, tool lists, argument constraints and rejected policy files."""

from __future__ import annotations

import cedarpy
import pytest

from inwall.errors import ConfigError, InvalidInput
from inwall.governance import DENIAL_TEXT, Identity, PolicyEngine, PolicyError, PolicySet, ToolRef
from inwall.governance._cedar_values import MAX_DEPTH, to_cedar, to_cedar_record
from inwall.governance.policy import schema_text

POLICY = """\
// Engineers get the sandbox tools and GitHub; product managers get Jira and Drive.
@id("eng-tools")
permit (principal in Inwall::Role::"engineer", action == Inwall::Action::"call_tool", resource)
when { resource.kind == "builtin" || resource.mcp_server == "github" };

@id("pm-tools")
permit (principal in Inwall::Role::"pm", action, resource)
when { resource.mcp_server == "jira" || resource.mcp_server == "drive" };

@id("no-rm-rf")
forbid (principal, action, resource == Inwall::Tool::"bash")
when { context.input has command && context.input.command like "*rm -rf*" };

// Only the production tunnel's tools are off limits, and only to non-admins.
@id("prod-admins-only")
forbid (principal, action, resource)
when { resource.tunnel == "tnl_prod" }
unless { principal.kind == "admin" };

@id("corp-db")
permit (principal, action, resource)
when {
  resource.mcp_server == "db" &&
  principal.claims has email && principal.claims.email like "*@corp.example"
};

@id("jira-project-x-only")
forbid (principal in Inwall::Role::"pm", action, resource == Inwall::Tool::"mcp__jira__create")
unless { context.input has project && context.input.project == "X" };
"""

ALICE = Identity("usr_alice", "user", ("engineer",), name="Alice")
BOB = Identity("usr_bob", "user", ("pm",), name="Bob")
ADMIN = Identity("usr_root", "admin", ("engineer",))
CAROL = Identity("https://idp.example#carol", "end_user", (), claims={"email": "carol@corp.example"})
MALLORY = Identity("https://idp.example#m", "end_user", (), claims={"email": "m@evil.example"})

BASH = ToolRef("bash", "builtin")
READ = ToolRef("read", "builtin")
GH = ToolRef("mcp__github__search", "mcp", mcp_server="github", tunnel="tnl_dev")
JIRA = ToolRef("mcp__jira__search", "mcp", mcp_server="jira")
JIRA_CREATE = ToolRef("mcp__jira__create", "mcp", mcp_server="jira")
DRIVE = ToolRef("mcp__drive__get", "mcp", mcp_server="drive")
DB = ToolRef("mcp__db__query", "mcp", mcp_server="db")
PROD_GH = ToolRef("mcp__prodgh__deploy", "mcp", mcp_server="github", tunnel="tnl_prod")
ALL = [BASH, READ, GH, JIRA, JIRA_CREATE, DRIVE, DB, PROD_GH]


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(PolicySet.parse(POLICY, source="policy.cedar"))


def names(tools: list[ToolRef]) -> list[str]:
    return [t.name for t in tools]


def test_two_roles_see_different_tools(engine: PolicyEngine) -> None:
    assert names(engine.visible(ALICE, ALL)) == ["bash", "read", "mcp__github__search"]
    assert names(engine.visible(BOB, ALL)) == ["mcp__jira__search", "mcp__jira__create", "mcp__drive__get"]


def test_two_roles_get_different_outcomes(engine: PolicyEngine) -> None:
    alice_bash = engine.decide(ALICE, BASH, {"command": "ls"})
    assert alice_bash.allowed and alice_bash.reasons == ("eng-tools",)
    bob_bash = engine.decide(BOB, BASH, {"command": "ls"})
    assert not bob_bash.allowed and bob_bash.reasons == ()
    assert engine.decide(BOB, JIRA, {"q": "bugs"}).allowed
    assert not engine.decide(ALICE, JIRA, {"q": "bugs"}).allowed


def test_argument_constraint_forbids_rm_rf(engine: PolicyEngine) -> None:
    assert engine.decide(ALICE, BASH, {"command": "ls -la"}).allowed  # positive control
    denied = engine.decide(ALICE, BASH, {"command": "cd / && rm -rf --no-preserve-root /"})
    assert not denied.allowed
    assert denied.reasons == ("no-rm-rf",)


def test_allowed_for_some_inputs_stays_visible_and_is_decided_per_call(engine: PolicyEngine) -> None:
    assert JIRA_CREATE in engine.visible(BOB, [JIRA_CREATE])
    assert engine.decide(BOB, JIRA_CREATE, {"project": "X", "title": "t"}).allowed
    refused = engine.decide(BOB, JIRA_CREATE, {"project": "Y", "title": "t"})
    assert not refused.allowed and refused.reasons == ("jira-project-x-only",)


def test_tunnel_attribute(engine: PolicyEngine) -> None:
    assert engine.decide(ALICE, GH, {}).allowed  # positive control: same server, other tunnel
    assert not engine.decide(ALICE, PROD_GH, {}).allowed
    assert PROD_GH not in engine.visible(ALICE, ALL)
    admin = engine.decide(ADMIN, PROD_GH, {})
    assert admin.allowed
    assert PROD_GH in engine.visible(ADMIN, ALL)


def test_claims_decide_for_end_users(engine: PolicyEngine) -> None:
    assert engine.decide(CAROL, DB, {"sql": "select 1"}).allowed
    assert not engine.decide(MALLORY, DB, {"sql": "select 1"}).allowed
    assert names(engine.visible(CAROL, ALL)) == ["mcp__db__query"]
    assert engine.visible(MALLORY, ALL) == []


def test_claims_sets_and_groups() -> None:
    policy = PolicySet.parse(
        "permit (principal, action, resource)\n"
        'when { principal.claims has groups && principal.claims.groups.contains("sre") };',
        source="groups.cedar",
    )
    engine = PolicyEngine(policy)
    sre = Identity("u1", "end_user", (), claims={"groups": ["dev", "sre"], "exp": 1.5, "nonce": None})
    dev = Identity("u2", "end_user", (), claims={"groups": ["dev"]})
    assert engine.decide(sre, BASH, {}).allowed
    assert not engine.decide(dev, BASH, {}).allowed


def test_a_forbid_that_errors_denies(engine: PolicyEngine) -> None:
    """Cedar skips an erroring policy; for a forbid that would fail open, so it denies."""
    assert engine.decide(ALICE, BASH, {"command": "ls"}).allowed  # positive control
    for sneaky in (5, ["rm -rf /"], {"x": "rm -rf /"}, True):
        decision = engine.decide(ALICE, BASH, {"command": sneaky})
        assert not decision.allowed, sneaky
        assert decision.reasons == ("no-rm-rf",)
        assert decision.errors and all(e.startswith("policy no-rm-rf:") for e in decision.errors)


def test_reserved_cedar_keys_cannot_smuggle_or_hide(engine: PolicyEngine) -> None:
    smuggled = {"command": {"__entity": {"type": "Inwall::Role", "id": "engineer"}}}
    assert not engine.decide(ALICE, BASH, smuggled).allowed
    hidden = {"__entity": {"type": "Inwall::Tool", "id": "read"}, "command": "rm -rf /"}
    decision = engine.decide(ALICE, BASH, hidden)
    assert not decision.allowed and decision.reasons == ("no-rm-rf",)
    extn = {"__extn": {"fn": "ip", "arg": "127.0.0.1"}, "command": "ls"}
    assert engine.decide(ALICE, BASH, extn).allowed  # positive control: the rest of the input is read


def test_errors_do_not_quote_input_values() -> None:
    policy = PolicySet.parse(
        """
        @id("allow") permit (principal, action, resource);
        @id("ip") forbid (principal, action, resource)
        when { context.input has host && ip(context.input.host).isLoopback() };
        @id("sum") forbid (principal, action, resource)
        when { context.input has n && context.input.n + 9223372036854775807 > 0 };
        """,
        source="errors.cedar",
    )
    engine = PolicyEngine(policy)
    assert engine.decide(ALICE, BASH, {"host": "10.0.0.1"}).allowed  # positive control
    for value in ({"host": "sk-SECRET-TOKEN-1234"}, {"n": 424242}):
        decision = engine.decide(ALICE, BASH, value)
        assert not decision.allowed
        assert decision.errors
        text = " ".join(decision.errors)
        assert "SECRET" not in text and "424242" not in text


def test_no_policy_allows_everything_and_says_so() -> None:
    engine = PolicyEngine(None)
    assert engine.decide(BOB, BASH, {"command": "rm -rf /"}).allowed
    assert engine.visible(BOB, ALL) == ALL
    assert "every tool call is allowed" in engine.describe()


def test_describe_with_policy(engine: PolicyEngine) -> None:
    text = engine.describe()
    assert "policy.cedar" in text and "6 policies" in text and "denied" in text


def test_empty_policy_denies_everything() -> None:
    engine = PolicyEngine(PolicySet.parse("// nothing yet\n", source="empty.cedar"))
    assert not engine.decide(ADMIN, BASH, {}).allowed
    assert engine.visible(ADMIN, ALL) == []


def test_denial_text_names_nothing() -> None:
    assert DENIAL_TEXT == "The tool call was denied by policy."


def test_forbid_regardless_of_input_hides_the_tool() -> None:
    policy = PolicySet.parse(
        """
        permit (principal, action, resource);
        forbid (principal, action, resource == Inwall::Tool::"bash") unless { principal.kind == "admin" };
        """,
        source="p.cedar",
    )
    engine = PolicyEngine(policy)
    assert names(engine.visible(ALICE, [BASH, READ])) == ["read"]
    assert names(engine.visible(ADMIN, [BASH, READ])) == ["bash", "read"]


def test_ids_cedar_syntax_cannot_write_still_work() -> None:
    policy = PolicySet.parse(
        'permit (principal in Inwall::Role::"r", action, resource) when { resource.kind == "mcp" };',
        source="p",
    )
    engine = PolicyEngine(policy)
    for user_id in ('weird "id"\n\u00e9\U0001f600', "o'brien\x01\u200b", "\u0301x", "a\u115fb"):
        odd = Identity(user_id, "user", ("r",))
        tool = ToolRef(f"mcp__x__{user_id}", "mcp", mcp_server="x")
        assert engine.visible(odd, [tool, BASH]) == [tool], repr(user_id)
        assert engine.decide(odd, tool, {}).allowed
        outsider = Identity(user_id, "user", ())
        assert engine.visible(outsider, [tool]) == []


def test_session_and_environment_in_context() -> None:
    policy = PolicySet.parse(
        "permit (principal, action, resource)\n"
        'when { context.environment_id == "env_1" && context.session_id like "sesn_*" };',
        source="p",
    )
    engine = PolicyEngine(policy)
    assert engine.decide(ALICE, BASH, {}, session_id="sesn_1", environment_id="env_1").allowed
    assert not engine.decide(ALICE, BASH, {}, session_id="sesn_1", environment_id="env_2").allowed


# --- rejected policy files ---------------------------------------------------------------


def reject(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        PolicySet.parse(text, source="bad.cedar")
    assert isinstance(info.value, ConfigError)
    return info.value


def test_syntax_error_names_its_line() -> None:
    error = reject(
        "permit (principal, action, resource);\n\npermit (\n  principal,\n  action\n  resource\n);\n"
    )
    assert error.message.startswith("bad.cedar:6: unexpected token `resource`")
    assert error.problems[0].line == 6


def test_bad_effect_and_missing_semicolon() -> None:
    assert (
        reject("permit (principal, action, resource);\npermitt (principal, action, resource);")
        .problems[0]
        .line
        == 2
    )
    missing = reject("permit (principal, action, resource);\n// fine\npermit (principal, action, resource)\n")
    assert missing.problems[0].line == 3 and "missing `;`" in missing.message


def test_semantic_parse_error_names_its_line() -> None:
    error = reject('permit (principal, action, resource)\nwhen {\n  "a" like 3\n};')
    assert error.problems[0].line == 3


def test_unknown_entity_type_names_its_line() -> None:
    error = reject(
        'permit (principal, action, resource);\n\npermit (principal in Inwall::Rol::"x", action, resource);'
    )
    assert error.problems[0].line == 3
    assert "unrecognized entity type `Inwall::Rol`" in error.message


def test_unknown_attribute_names_its_line() -> None:
    error = reject(
        '@id("ok") permit (principal, action, resource);\n'
        '@id("typo")\npermit (principal, action, resource)\nwhen {\n  resource.mcp_sever == "jira"\n};'
    )
    assert [p.line for p in error.problems] == [5]
    assert error.problems[0].policy_id == "typo"
    assert "bad.cedar:5: policy typo: attribute `mcp_sever`" in error.message


def test_unguarded_input_access_is_rejected_with_a_hint() -> None:
    error = reject('forbid (principal, action, resource) when { context.input.command like "*rm*" };')
    assert "guard each access with `has`" in error.message


def test_type_errors_against_the_schema() -> None:
    error = reject("permit (principal, action, resource) when { resource.tunnel == 5 };")
    assert error.problems[0].line == 1


def test_duplicate_ids_and_templates_are_rejected() -> None:
    dup = reject(
        '@id("a") permit (principal, action, resource);\n@id("a") forbid (principal, action, resource);'
    )
    assert dup.problems[0].line == 2 and "already used at line 1" in dup.message
    template = reject("permit (principal == ?principal, action, resource);")
    assert "templates" in template.message


def test_reasons_fall_back_to_cedar_ids() -> None:
    engine = PolicyEngine(PolicySet.parse("permit (principal, action, resource);", source="p"))
    assert engine.decide(ALICE, BASH, {}).reasons == ("policy0",)
    assert engine.policies is not None and engine.policies.policies[0].line == 1


def test_shipped_schema_parses() -> None:
    assert "namespace Inwall" in schema_text()
    cedarpy.Schema.from_str(schema_text())


def test_identity_and_tool_are_checked() -> None:
    with pytest.raises(InvalidInput):
        Identity("u", "robot", ())
    with pytest.raises(InvalidInput):
        Identity("", "user", ())
    with pytest.raises(InvalidInput):
        ToolRef("t", "plugin")
    assert Identity("u", "user", ["a", "b"]).roles == ("a", "b")  # type: ignore[arg-type]  # lists accepted


# --- JSON to Cedar ------------------------------------------------------------------------


def test_cedar_value_conversion() -> None:
    assert to_cedar("s") == "s" and to_cedar(True) is True and to_cedar(7) == 7
    assert to_cedar(2**63) == str(2**63) and to_cedar(-(2**63)) == -(2**63)
    assert to_cedar(1.5) == "1.5"
    assert to_cedar(None) is None
    assert to_cedar([1, None, "a"]) == [1, "a"]
    assert to_cedar_record({"a": None, "b": {"c": [1.0]}}) == {"b": {"c": ["1.0"]}}
    assert to_cedar_record({"__entity": {"type": "X", "id": "y"}, "k": 1}) == {"k": 1}
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 3):
        deep = {"d": deep}
    converted = to_cedar(deep)
    for _ in range(MAX_DEPTH):
        converted = converted["d"]
    assert isinstance(converted, str) and "leaf" in converted
