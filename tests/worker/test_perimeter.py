"""The worker's own checks, in a real sandbox: identity tokens, its Cedar policy, redaction.

Tokens are minted here with the governance library's :class:`IdentityIssuer`
(what the control plane runs) and handed to the session through
:class:`StaticIdentity`, the real twin of the control-plane fetcher. Every
refusal is proven by a marker the refused command would have created, and
every test has a positive control: the same call with a good token runs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic.lib.tools import ToolError
from anthropic.lib.tools._tool_dispatch import tool_error_content

from inwall.audit import verify_file
from inwall.governance import (
    DENIAL_TEXT,
    Decision,
    Identity,
    IdentityIssuer,
    IdentityKeys,
    IdentityVerifier,
    PolicyEngine,
    PolicyFile,
    PolicySet,
    Redactor,
    input_digest,
)
from inwall.worker.identity import StaticIdentity
from inwall.worker.perimeter import IDENTITY_DENIAL_TEXT, Perimeter, worker_audience
from inwall.worker.runtime import WITHHELD

from .conftest import session_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

ENV = "env_perimeter"
SID = "sesn_perimeter"
ENGINEER = Identity(user_id="user_eng", kind="user", roles=("engineer",), name="eng")
ANALYST = Identity(user_id="user_ana", kind="user", roles=("analyst",), name="ana")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> IdentityKeys:
    return IdentityKeys.load_or_create(tmp_path_factory.mktemp("cp-keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> IdentityKeys:
    return IdentityKeys.load_or_create(tmp_path_factory.mktemp("attacker-keys"))


_uses = iter(range(1_000_000))


def mint(
    keys: IdentityKeys,
    tool: str,
    input: dict[str, Any],
    *,
    who: Identity = ENGINEER,
    audience: str = worker_audience(ENV),
    session_id: str = SID,
    clock: Callable[[], float] = time.time,
) -> str:
    """A token as the control plane mints it for one pending call (a fresh tool_use id each time)."""
    return IdentityIssuer(keys.private_key, clock=clock).mint(
        who,
        audience=audience,
        tool=tool,
        input_sha256=input_digest(input),
        tool_use_id=f"sevt_{next(_uses):06d}",
        session_id=session_id,
    )


def perimeter(keys: IdentityKeys, **kw: Any) -> Perimeter:
    verifier = IdentityVerifier(keys.public_key, audience=worker_audience(ENV))
    return Perimeter(environment_id=ENV, verifier=verifier, **kw)


async def call(tool: Any, input: dict[str, Any]) -> tuple[bool, str]:
    """Through the SDK tool object, as the runner calls it: (is_error, text the model reads)."""
    try:
        result = await tool.call(input)
    except ToolError as exc:
        content = tool_error_content(exc)
        return True, content if isinstance(content, str) else json.dumps(content)
    return False, result if isinstance(result, str) else json.dumps(result)


def tool_calls(audit: Path) -> list[dict[str, Any]]:
    return [r for r in map(json.loads, audit.read_text().splitlines()) if r["kind"] == "tool_call"]


async def test_bad_identity_tokens_are_refused_and_the_tool_never_runs(
    ws_root: Path, keys: IdentityKeys, other_keys: IdentityKeys
) -> None:
    touch = {"command": "touch marker"}
    log_run = {"command": "echo ran >> runs.log"}
    valid_once = mint(keys, "bash", log_run)
    offers: list[tuple[str, str | None, dict[str, Any]]] = [
        ("bad_signature", mint(other_keys, "bash", touch), touch),  # forged: another key
        ("expired", mint(keys, "bash", touch, clock=lambda: time.time() - 3600), touch),
        ("wrong_audience", mint(keys, "bash", touch, audience=worker_audience("env_other")), touch),
        ("wrong_audience", mint(keys, "bash", touch, audience="inwall-gateway:tnl_x"), touch),
        ("wrong_tool", mint(keys, "read", touch), touch),
        ("wrong_input", mint(keys, "bash", {"command": "echo harmless"}), touch),
        ("wrong_session", mint(keys, "bash", touch, session_id="sesn_other"), touch),
        ("malformed", "not-a-jwt", touch),
        ("absent", None, touch),  # nothing on offer, and identity is required
        ("verified", valid_once, log_run),  # positive control: runs once
        ("replayed", valid_once, log_run),  # the same token again
    ]
    identity = StaticIdentity(*(token for _, token, _ in offers))
    async with session_runtime(
        ws_root, session_id=SID, perimeter=perimeter(keys, require_identity=True), identity=identity
    ) as r:
        bash = r.tools["bash"]
        for reason, _, input in offers:
            is_error, text = await call(bash, input)
            if reason == "verified":
                assert (is_error, text) == (False, ""), text
            else:
                assert (is_error, text) == (True, IDENTITY_DENIAL_TEXT), reason
            assert not (r.workspace / "marker").exists(), reason
        assert (r.workspace / "runs.log").read_text() == "ran\n"  # ran exactly once
        # positive control: a good token for the refused command runs it, in the sandbox
        identity = r.rt.identity = StaticIdentity(mint(keys, "bash", touch))
        assert await call(bash, touch) == (False, "")
        assert (r.workspace / "marker").exists()
        assert identity.asked == 1
    calls = tool_calls(r.audit_path)
    got = [
        (c["outcome"], c["perimeter"]["identity"], c["perimeter"].get("identity_reason", "")) for c in calls
    ]
    assert got == [
        *(("denied", "refused", reason) for reason, _, _ in offers[:9]),
        ("ok", "verified", ""),
        ("denied", "refused", "replayed"),
        ("ok", "verified", ""),
    ]
    assert calls[-1]["perimeter"]["caller"] == "user_eng" and calls[-1]["perimeter"]["roles"] == ["engineer"]
    assert calls[-1]["perimeter"]["tool_use_id"].startswith("sevt_")
    text = r.audit_path.read_text()
    assert not any(token and token in text for _, token, _ in offers)  # tokens are never recorded
    assert verify_file(r.audit_path).ok


async def test_the_token_binds_the_raw_input_the_model_wrote(ws_root: Path, keys: IdentityKeys) -> None:
    """``{"command": ..., "timeout_ms": null}`` is not ``{"command": ...}`` to the control plane."""
    with_null = {"command": "touch marker", "timeout_ms": None}
    identity = StaticIdentity(mint(keys, "bash", {"command": "touch marker"}), mint(keys, "bash", with_null))
    async with session_runtime(
        ws_root, session_id=SID, perimeter=perimeter(keys, require_identity=True), identity=identity
    ) as r:
        assert await call(r.tools["bash"], with_null) == (True, IDENTITY_DENIAL_TEXT)
        assert not (r.workspace / "marker").exists()
        assert await call(r.tools["bash"], with_null) == (False, "")
        assert (r.workspace / "marker").exists()


async def test_without_required_identity_an_unoffered_token_means_anonymous(
    ws_root: Path, keys: IdentityKeys, other_keys: IdentityKeys
) -> None:
    policy = ws_root / "worker.cedar"
    policy.write_text(
        '@id("engineers") permit (principal in Inwall::Role::"engineer", action, resource);\n'
        '@id("anyone-reads") permit (principal, action, resource == Inwall::Tool::"read");\n'
    )
    touch = {"command": "touch marker"}
    identity = StaticIdentity(None, None, mint(other_keys, "bash", touch), mint(keys, "bash", touch))
    p = perimeter(keys, require_identity=False, policy=PolicyFile(policy))
    async with session_runtime(ws_root, session_id=SID, perimeter=p, identity=identity) as r:
        # anonymous: a read is permitted to anyone, bash only to engineers
        assert (await call(r.tools["read"], {"file_path": "nothing.txt"}))[1].startswith("read: ")
        assert await call(r.tools["bash"], touch) == (True, DENIAL_TEXT)
        # a token on offer must verify even though none is required
        assert await call(r.tools["bash"], touch) == (True, IDENTITY_DENIAL_TEXT)
        assert not (r.workspace / "marker").exists()
        assert await call(r.tools["bash"], touch) == (False, "")
        assert (r.workspace / "marker").exists()
    got = [
        (c["perimeter"]["identity"], c["perimeter"]["caller"], c["outcome"]) for c in tool_calls(r.audit_path)
    ]
    assert got == [
        ("anonymous", "anonymous", "error"),
        ("anonymous", "anonymous", "denied"),
        ("refused", "anonymous", "denied"),
        ("verified", "user_eng", "ok"),
    ]


async def test_the_workers_policy_decides_on_the_identity_and_follows_edits(
    ws_root: Path, keys: IdentityKeys
) -> None:
    policy = ws_root / "worker.cedar"
    policy.write_text(
        '@id("analysts-no-bash") forbid (principal in Inwall::Role::"analyst", action, '
        'resource == Inwall::Tool::"bash");\n'
        '@id("no-rm") forbid (principal, action, resource == Inwall::Tool::"bash") '
        'when { context.input has command && context.input.command like "*rm *" };\n'
        '@id("users") permit (principal, action, resource) when { principal.kind == "user" };\n'
    )
    touch = {"command": "touch marker"}
    rm = {"command": "touch rm-marker; rm -f nothing"}
    broken = {"command": "touch after-broken-edit"}
    fixed = {"command": "touch after-fix"}
    identity = StaticIdentity(
        mint(keys, "bash", touch, who=ANALYST),
        mint(keys, "write", {"file_path": "a.txt", "content": "x"}, who=ANALYST),
        mint(keys, "bash", rm),
        mint(keys, "bash", broken),
        mint(keys, "bash", fixed),
    )
    errors: list[str] = []
    p = perimeter(keys, require_identity=True, policy=PolicyFile(policy, on_error=errors.append))
    async with session_runtime(ws_root, session_id=SID, perimeter=p, identity=identity) as r:
        assert await call(r.tools["bash"], touch) == (True, DENIAL_TEXT)  # the analyst: no bash here
        assert await call(r.tools["write"], {"file_path": "a.txt", "content": "x"}) == (
            False,
            "wrote 1 bytes to a.txt",
        )
        assert await call(r.tools["bash"], rm) == (True, DENIAL_TEXT)  # an argument rule, for anyone
        assert not (r.workspace / "marker").exists() and not (r.workspace / "rm-marker").exists()
        policy.write_text(policy.read_text().replace("forbid (principal in", "forbidd (principal in"))
        assert await call(r.tools["bash"], broken) == (False, "")  # the old policy holds
        assert errors and "worker.cedar" in errors[0]
        policy.write_text('@id("nothing") forbid (principal, action, resource);\n')
        assert await call(r.tools["bash"], fixed) == (True, DENIAL_TEXT)  # the fixed edit took effect
        assert (r.workspace / "after-broken-edit").exists() and not (r.workspace / "after-fix").exists()
    calls = tool_calls(r.audit_path)
    assert [c["perimeter"].get("policies") for c in calls] == [
        ["analysts-no-bash"],
        ["users"],
        ["no-rm"],
        ["users"],
        ["nothing"],
    ]
    assert [c["perimeter"].get("denied_by") for c in calls] == ["policy", None, "policy", None, "policy"]


SECRETS = {
    "api_keys": "sk-ant-api03-" + "Zx9" * 12,
    "emails": "alice.secret@example.com",
    "card_numbers": "4111 1111 1111 1111",
}


async def test_results_are_redacted_before_they_leave_and_the_audit_counts_only(ws_root: Path) -> None:
    planted = " ".join(SECRETS.values())
    p = Perimeter(environment_id=ENV, redactor=Redactor(tuple(SECRETS), (r"project-\d{4}",)))
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        out = await call(r.tools["bash"], {"command": f"echo '{planted}'; echo project-1234"})
        assert out == (
            False,
            "[REDACTED:api_keys] [REDACTED:emails] [REDACTED:card_numbers]\n[REDACTED:custom]",
        )
        failing = await call(r.tools["bash"], {"command": f"echo '{SECRETS['emails']}'; exit 3"})
        assert failing == (True, "[REDACTED:emails]")  # errors leave the perimeter too
        await call(r.tools["write"], {"file_path": "s.txt", "content": planted + "\n"})
        assert await call(r.tools["read"], {"file_path": "s.txt"}) == (
            False,
            "[REDACTED:api_keys] [REDACTED:emails] [REDACTED:card_numbers]\n",
        )
        grep = await call(r.tools["grep"], {"pattern": "example"})
        assert "[REDACTED:emails]" in grep[1] and SECRETS["emails"] not in grep[1]
        # positive control: the secret really is in the workspace, the command really printed it
        assert (r.workspace / "s.txt").read_text() == planted + "\n"
    calls = tool_calls(r.audit_path)
    counts = [{x["pattern"]: x["count"] for x in c.get("redactions", [])} for c in calls]
    all_three = {"api_keys": 1, "emails": 1, "card_numbers": 1}
    assert counts == [{**all_three, "custom": 1}, {"emails": 1}, {}, all_three, all_three]
    text = r.audit_path.read_text()
    assert not any(secret in text for secret in SECRETS.values()) and "project-1234" not in text
    assert all("perimeter" not in c for c in calls)  # redaction alone admits every call


async def test_a_result_the_redactor_cannot_finish_in_time_is_withheld(ws_root: Path) -> None:
    p = Perimeter(environment_id=ENV, redactor=Redactor(tuple(SECRETS)))
    big = {"command": f"for i in $(seq 1 20000); do echo '{SECRETS['emails']} row '$i; done"}  # ~1 MB
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        patient = r.rt.options
        r.rt.options = replace(patient, redact_timeout_s=0.001)  # no regex pass over a megabyte is this fast
        assert await call(r.tools["bash"], big) == (True, WITHHELD)
        # positive control: with time to finish, the same output comes back, redacted
        r.rt.options = patient
        is_error, text = await call(r.tools["bash"], big)
        assert not is_error and text.count("[REDACTED:emails] row ") == 20000
        assert SECRETS["emails"] not in text
    calls = tool_calls(r.audit_path)
    assert [(c["outcome"], c.get("redaction")) for c in calls] == [("withheld", "timed_out"), ("ok", None)]
    assert SECRETS["emails"] not in r.audit_path.read_text()


async def test_a_redaction_past_its_deadline_keeps_the_session_busy(ws_root: Path) -> None:
    """A thread cannot be stopped: while a late redaction still runs, results are withheld at once."""
    # Seconds of work, in Python (a single regex pass would hold the GIL and stall the loop too):
    # 6 MB of card-like numbers, each checked and none valid.
    p = Perimeter(environment_id=ENV, redactor=Redactor(("card_numbers",)))
    slow = {"command": "yes '4111 1111 1111 1112' | head -n 300000"}
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        patient = r.rt.options
        r.rt.options = replace(patient, redact_timeout_s=0.05)
        assert await call(r.tools["bash"], slow) == (True, WITHHELD)
        r.rt.options = patient  # a deadline the next result would meet easily
        assert await call(r.tools["bash"], {"command": "echo next"}) == (True, WITHHELD)
        # positive control: once the late thread has ended, results come back again
        busy = r.rt._redact_busy
        assert await anyio.to_thread.run_sync(partial(busy.acquire, timeout=60))
        busy.release()
        assert await call(r.tools["bash"], {"command": "echo next"}) == (False, "next")
    calls = tool_calls(r.audit_path)
    assert [(c["outcome"], c.get("redaction")) for c in calls] == [
        ("withheld", "timed_out"),
        ("withheld", "timed_out"),
        ("ok", None),
    ]


async def test_violations_read_from_output_are_bounded_and_redacted_in_the_audit(ws_root: Path) -> None:
    """A denied path from command output goes to the audit log cut short, redacted like the result."""
    email = SECRETS["emails"]
    name = "./" * 150 + email + "_" + "z" * 200  # over 512 characters, the secret inside the first 512
    p = Perimeter(environment_id=ENV, redactor=Redactor(("emails",)))
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        is_error, text = await call(r.tools["bash"], {"command": f"echo x > /usr/{name}"})
        assert is_error and "Read-only file system" in text and "[REDACTED:emails]" in text  # it ran
        assert email not in text
    (vio,) = [rec for rec in map(json.loads, r.audit_path.read_text().splitlines()) if rec.get("violation")]
    assert vio["violation"] == "filesystem_denied" and vio["op"] == "write"
    assert str(vio["path"]).startswith("/usr/././") and "[REDACTED:emails]" in str(vio["path"])
    assert len(str(vio["path"])) <= 512
    assert email not in r.audit_path.read_text()


class DecisionThreads(PolicyEngine):
    """A real policy engine that notes which thread each decision ran on."""

    def __init__(self, policies: PolicySet) -> None:
        super().__init__(policies)
        self.threads: list[int] = []

    def decide(self, *args: Any, **kwargs: Any) -> Decision:
        self.threads.append(threading.get_ident())
        return super().decide(*args, **kwargs)


async def test_a_large_input_is_decided_off_the_event_loop(ws_root: Path) -> None:
    """The control plane's 1 MB offload write: Cedar spends milliseconds on it, not on the event loop."""
    engine = DecisionThreads(PolicySet.parse("permit (principal, action, resource);\n", source="test"))
    p = Perimeter(environment_id=ENV, policy=engine)
    loop_thread = threading.get_ident()
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        assert await call(r.tools["write"], {"file_path": "small.txt", "content": "x"}) == (
            False,
            "wrote 1 bytes to small.txt",
        )
        big = "y" * (1024 * 1024)
        is_error, _ = await call(r.tools["write"], {"file_path": "big.txt", "content": big})
        assert not is_error and (r.workspace / "big.txt").stat().st_size == len(big)
    small_thread, big_thread = engine.threads
    assert small_thread == loop_thread and big_thread != loop_thread


async def test_a_policy_reload_stays_on_the_event_loop_for_a_large_input(ws_root: Path) -> None:
    """Only the decision moves to a thread: the reload and its callback (an audit record) do not."""
    policy = ws_root / "worker.cedar"
    policy.write_text('@id("all") permit (principal, action, resource);\n')
    reloads: list[int] = []
    p = Perimeter(
        environment_id=ENV,
        policy=PolicyFile(policy, on_reload=lambda _: reloads.append(threading.get_ident())),
    )
    async with session_runtime(ws_root, session_id=SID, perimeter=p) as r:
        policy.write_text('@id("no-writes") forbid (principal, action, resource == Inwall::Tool::"write");\n')
        big = {"file_path": "big.txt", "content": "y" * (1024 * 1024)}
        assert await call(r.tools["write"], big) == (True, DENIAL_TEXT)  # the edited policy decided
        assert not (r.workspace / "big.txt").exists()
    assert reloads == [threading.get_ident()]
    assert [c["perimeter"]["policies"] for c in tool_calls(r.audit_path)] == [["no-writes"]]
