"""The sandboxed toolset answers exactly as the SDK's ``beta_agent_toolset_20260401`` does, input for input.

Two identical directories; the SDK's tools run on one, ours on the other;
every result (content, or the error the model would read, or the repr of a
non-ToolError exception) is compared after the root path is replaced by
``<W>``. The first test runs our tools in-process (the shim's op handlers
behind the real tool objects, no sandbox) over a large table; the second runs
a subset through a real bubblewrap sandbox.

One deliberate deviation (:data:`DEVIATIONS`): bash returns up to the
worker's output limit (8 MiB by default) where the SDK keeps the last
100 KiB, so a large output reaches the control plane whole and is offloaded
there. With the limit set to the SDK's 100 KiB, every case matches again,
which pins the truncation beyond the limit to the SDK's behaviour.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.tools import ToolError
from anthropic.lib.tools._tool_dispatch import tool_error_content, tool_result_content
from anthropic.lib.tools.agent_toolset import AgentToolContext, beta_agent_toolset_20260401

from inwall.worker import _shim
from inwall.worker.tools import TOOL_NAMES, sandboxed_toolset

from .conftest import session_runtime

pytestmark = pytest.mark.anyio

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def populate(root: Path) -> None:
    """The same tree in both directories, with fixed mtimes so "newest first" orders agree."""
    (root / "sub" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "node_modules").mkdir()
    files = {
        "a.txt": "l1\nl2\nl3\nfoo foo\n",
        "b.txt": "bar bar\nfoo\n",
        "crlf.txt": "one\r\ntwo\r\n",
        "sub/c.py": "import os\nprint('foo')\n",
        "sub/deep/d.py": "x = 1\n",
        ".hidden": "foo hidden\n",
        ".git/config": "foo in git\n",
        "node_modules/m.js": "foo in modules\n",
        "uni.txt": "héllo wörld\n",
    }
    for rel, text in files.items():
        (root / rel).write_text(text)
    (root / "big.txt").write_text("".join(f"line {i} " + "x" * 90 + "\n" for i in range(4000)))
    (root / "longline.txt").write_text("y" * 300_000 + "\nshort\n")
    (root / "bin.dat").write_bytes(b"\xff\xfe\x00binary\x00")
    (root / "pic.png").write_bytes(PNG)
    (root / "doc.pdf").write_bytes(b"%PDF-1.4\n%fake\n")
    (root / "link_in").symlink_to("a.txt")
    (root / "link_out").symlink_to("/etc/passwd")
    (root / "loop").symlink_to("loop")
    t = 1_700_000_000
    for i, p in enumerate(sorted(root.rglob("*"), key=str)):
        if not p.is_symlink():
            os.utime(p, (t + i * 10, t + i * 10))


# (tool, input) in order; later rows see earlier writes on both sides
CASES: list[tuple[str, dict[str, Any]]] = [
    ("read", {"file_path": "a.txt"}),
    ("read", {"file_path": "a.txt", "view_range": [2, 3]}),
    ("read", {"file_path": "a.txt", "view_range": [2, 0]}),
    ("read", {"file_path": "a.txt", "view_range": [0, 1]}),
    ("read", {"file_path": "a.txt", "view_range": [5, 2]}),
    ("read", {"file_path": "a.txt", "view_range": ["1", "2"]}),
    ("read", {"file_path": "a.txt", "view_range": [1]}),
    ("read", {"file_path": "a.txt", "view_range": []}),
    ("read", {"file_path": "crlf.txt"}),
    ("read", {"file_path": "uni.txt"}),
    ("read", {"file_path": "nope.txt"}),
    ("read", {"file_path": "sub"}),
    ("read", {"file_path": "big.txt"}),
    ("read", {"file_path": "big.txt", "view_range": [10, 12]}),
    ("read", {"file_path": "big.txt", "view_range": [1, 4000]}),
    ("read", {"file_path": "longline.txt", "view_range": [1, 1]}),
    ("read", {"file_path": "longline.txt", "view_range": [2, 2]}),
    ("read", {"file_path": "bin.dat"}),
    ("read", {"file_path": "pic.png"}),
    ("read", {"file_path": "doc.pdf"}),
    ("read", {"file_path": "pic.png", "view_range": [1, 2]}),
    ("read", {"file_path": "../x"}),
    ("read", {"file_path": "/etc/passwd"}),
    ("read", {"file_path": "link_in"}),
    ("read", {"file_path": "link_out"}),
    ("read", {"file_path": "loop"}),
    ("read", {"file_path": "a.txt", "extra": 1}),
    ("read", {}),
    ("read", {"file_path": 5}),
    ("write", {"file_path": "new/dir/n.txt", "content": "héllo"}),
    ("read", {"file_path": "new/dir/n.txt"}),
    ("write", {"file_path": "a.txt", "content": "l1\nl2\nl3\nfoo foo\nfoo again\n"}),
    ("write", {"file_path": "../escape.txt", "content": "x"}),
    ("write", {"file_path": "link_out", "content": "x"}),
    ("write", {"file_path": "sub", "content": "x"}),
    ("write", {"file_path": "w.txt"}),
    ("write", {"file_path": "w.txt", "content": "x", "mode": "a"}),
    ("edit", {"file_path": "b.txt", "old_string": "bar bar", "new_string": "baz"}),
    ("edit", {"file_path": "b.txt", "old_string": "absent", "new_string": "x"}),
    ("edit", {"file_path": "a.txt", "old_string": "foo", "new_string": "FOO"}),
    ("edit", {"file_path": "a.txt", "old_string": "foo", "new_string": "FOO", "replace_all": True}),
    ("edit", {"file_path": "a.txt", "old_string": "", "new_string": "x"}),
    ("edit", {"file_path": "missing.txt", "old_string": "a", "new_string": "b"}),
    ("edit", {"file_path": "bin.dat", "old_string": "a", "new_string": "b"}),
    ("edit", {"file_path": "big.txt", "old_string": "a", "new_string": "b"}),
    ("edit", {"file_path": "sub", "old_string": "a", "new_string": "b"}),
    ("edit", {"file_path": "../b.txt", "old_string": "a", "new_string": "b"}),
    ("read", {"file_path": "a.txt"}),
    ("glob", {"pattern": "*.txt"}),
    ("glob", {"pattern": "**/*.py"}),
    ("glob", {"pattern": "sub/**"}),
    ("glob", {"pattern": "*.py", "path": "sub"}),
    ("glob", {"pattern": "*.nothing"}),
    ("glob", {"pattern": "/etc/*"}),
    ("glob", {"pattern": "../*"}),
    ("glob", {"pattern": "*", "path": "../"}),
    ("glob", {"pattern": "*", "path": "missing"}),
    ("glob", {"pattern": ""}),
    ("grep", {"pattern": "foo"}),
    ("grep", {"pattern": "foo", "path": "b.txt"}),
    ("grep", {"pattern": "print", "path": "sub"}),
    ("grep", {"pattern": "zzz-not-there"}),
    ("grep", {"pattern": "(unclosed"}),
    ("grep", {"pattern": "foo", "path": "/etc"}),
    ("grep", {"pattern": "foo", "path": "missing"}),
    ("bash", {"command": "echo hello"}),
    ("bash", {"command": "echo out; echo err 1>&2; (exit 4)"}),
    ("bash", {"command": "false"}),
    ("bash", {"command": "true"}),
    ("bash", {"command": "mkdir -p t && cd t && export V=42 && f() { echo fn$1; }"}),
    ("bash", {"command": "pwd; echo $V; f 7"}),
    ("bash", {"command": "printf '\\033[31mred\\033[0m plain\\n'"}),
    ("bash", {"command": "cat; echo after-cat"}),
    ("bash", {"command": "seq 1 30000"}),
    ("bash", {"command": "printf 'no newline'"}),
    ("bash", {}),
    ("bash", {"command": ""}),
    ("bash", {"command": "sleep 5", "timeout_ms": 300}),
    ("bash", {"command": "echo dead?"}),
    ("bash", {"restart": True}),
    ("bash", {"command": "pwd; echo ${V:-unset}"}),
    ("bash", {"command": "echo bye; exit 3"}),
    ("bash", {"restart": True, "command": "ignored"}),
    ("bash", {"command": "if true; then"}),
    ("bash", {"restart": True}),
    ("bash", {"command": "echo x", "bogus": 1}),
    ("bash", {"command": "echo x", "timeout_ms": "2000"}),
]


SEQ_30000 = "\n".join(str(i) for i in range(1, 30001))
# (tool, input) -> our exact result, where the SDK's differs on purpose (see the module docstring)
DEVIATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("bash", json.dumps({"command": "seq 1 30000"})): (
        "ok",
        SEQ_30000,
    ),  # 169 KB: whole, not the last 100 KiB
}


class LocalShim:
    """The shim's op handlers in-process: our tool objects without the sandbox (a real twin, not a mock)."""

    def __init__(self, workdir: Path, *, bash_output_bytes: int | None = None) -> None:
        self.shim = _shim.Shim(str(workdir))
        self.next_id = 0
        if bash_output_bytes is not None:  # as the worker sets it: in the hello
            reply = _shim.handle(
                self.shim, {"id": 0, "op": "hello", "args": {"bash_output_bytes": bash_output_bytes}}
            )
            assert reply["ok"], reply

    async def call(self, tool: str, args: dict[str, Any], **_: Any) -> Any:
        self.next_id += 1
        reply = _shim.handle(self.shim, {"id": self.next_id, "op": tool, "args": args})
        if reply["ok"]:
            return reply["result"]
        if "exception" in reply:
            raise RuntimeError(reply["exception"])
        raise ToolError(reply["error"])

    async def aclose(self) -> None:
        self.shim.close()


def outcome(result: Any, root: Path) -> tuple[str, str]:
    kind, value = result
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    text = re.sub(r"__ANT_CM''D_[0-9a-f]{32}_DONE__", "<SENTINEL>", text)  # a fresh nonce per call
    return kind, text.replace(str(root.resolve()), "<W>").replace(str(root), "<W>")


async def run_tool(tool: Any, args: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "ok", tool_result_content(await tool.call(args))
    except ToolError as e:
        return "error", tool_error_content(e)
    except RuntimeError as e:  # LocalShim's stand-in for the shim's exception repr
        return "exception", str(e)
    except Exception as e:
        return "exception", repr(e)


async def compare(
    cases: Sequence[tuple[str, dict[str, Any]]],
    sdk_root: Path,
    ours: dict[str, Any],
    our_root: Path,
    *,
    deviations: dict[tuple[str, str], tuple[str, str]] | None = None,
) -> None:
    ctx = AgentToolContext(workdir=sdk_root)
    sdk = {t.name: t for t in beta_agent_toolset_20260401(ctx)}
    try:
        mismatches = []
        for tool, args in cases:
            want = outcome(await run_tool(sdk[tool], dict(args)), sdk_root)
            got = outcome(await run_tool(ours[tool], dict(args)), our_root)
            if (
                tool == "grep"
            ):  # ripgrep searches files in parallel: its line order varies run to run, SDK's too
                want, got = ((w[0], "\n".join(sorted(w[1].split("\n")))) for w in (want, got))
            deviation = (deviations or {}).get((tool, json.dumps(args)))
            if deviation is not None:
                # the SDK cut this one; ours is whole, and the SDK's tail is the end of ours
                assert want[1].startswith("[output truncated]\n"), want[1][:100]
                assert deviation[1].endswith(want[1].removeprefix("[output truncated]\n"))
                want = deviation
            if want != got:
                mismatches.append(f"{tool} {args}:\n  sdk:  {want!r:.600}\n  ours: {got!r:.600}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        for t in sdk.values():
            from anthropic.lib.tools._beta_functions import aclose_runnable_tool

            await aclose_runnable_tool(t)


async def test_toolset_matches_the_sdk_in_process(tmp_path: Path) -> None:
    sdk_root, our_root = tmp_path / "sdk", tmp_path / "ours"
    for root in (sdk_root, our_root):
        root.mkdir()
        populate(root)
    local = LocalShim(our_root)
    ours = {t.name: t for t in sandboxed_toolset(local)}  # type: ignore[arg-type]  # LocalShim is the runtime's twin
    assert tuple(ours) == TOOL_NAMES
    try:
        await compare(CASES, sdk_root, ours, our_root, deviations=DEVIATIONS)
    finally:
        await local.aclose()


async def test_with_the_sdks_output_limit_bash_truncates_exactly_as_the_sdk(tmp_path: Path) -> None:
    sdk_root, our_root = tmp_path / "sdk", tmp_path / "ours"
    for root in (sdk_root, our_root):
        root.mkdir()
        populate(root)
    local = LocalShim(our_root, bash_output_bytes=_shim.SDK_BASH_OUTPUT_LIMIT)
    ours = {t.name: t for t in sandboxed_toolset(local)}  # type: ignore[arg-type]
    bash_cases = [c for c in CASES if c[0] == "bash"] + [("bash", {"command": "seq 1 300000"})]
    try:
        await compare(
            bash_cases, sdk_root, ours, our_root
        )  # no deviations: seq 1 30000 is cut as the SDK cuts it
    finally:
        await local.aclose()


def _expected_tail(output: bytes, limit: int) -> str:
    """What the SDK's algorithm keeps of ``output`` under ``limit``: the stream's tail, sentinel line off."""
    sentinel_line = b"\n__ANT_CMD_" + b"0" * 32 + b"_DONE__0\n"
    kept = (output + sentinel_line)[-limit:]
    return "[output truncated]\n" + kept[: -len(sentinel_line)].decode().rstrip("\n")


async def test_bash_output_up_to_the_limit_is_whole_and_beyond_it_keeps_the_tail(tmp_path: Path) -> None:
    limit = 64 * 1024
    local = LocalShim(tmp_path, bash_output_bytes=limit)
    bash = {t.name: t for t in sandboxed_toolset(local)}["bash"]  # type: ignore[arg-type]
    try:
        # under the limit: whole (the SDK would have kept this whole too)
        under = await bash.call({"command": "seq 1 10000"})
        assert under == "\n".join(str(i) for i in range(1, 10001))
        # far over the limit (the buffer is trimmed many times): the SDK's tail form
        full = "".join(f"{i}\n" for i in range(1, 200001)).encode()
        over = await bash.call({"command": "seq 1 200000"})
        assert over == _expected_tail(full, limit)
        assert len(over.encode()) <= limit
        # positive control: the shell still works after both
        assert await bash.call({"command": "echo still-here"}) == "still-here"
    finally:
        await local.aclose()


async def test_a_bash_result_always_fits_the_control_planes_request_limit(tmp_path: Path) -> None:
    local = LocalShim(tmp_path)  # the default limit, 8 MiB
    bash = {t.name: t for t in sandboxed_toolset(local)}["bash"]  # type: ignore[arg-type]
    try:
        # 2 MiB of control characters: under the byte limit, but 12 MiB once JSON-escaped
        ctl = await bash.call({"command": "head -c 2097152 /dev/zero | tr '\\0' '\\1'; echo; echo end"})
        body = ctl.removeprefix("[output truncated]\n")
        assert ctl.startswith("[output truncated]\n") and body.endswith("\x01\nend")
        escaped = len(json.dumps(body, ensure_ascii=False).encode()) - 2
        assert _shim.RESULT_JSON_CEILING - 64 <= escaped <= _shim.RESULT_JSON_CEILING
        # positive control: 2 MiB of text is returned whole
        text = await bash.call({"command": "head -c 2097152 /dev/zero | tr '\\0' 'a'; echo"})
        assert text == "a" * 2097152
    finally:
        await local.aclose()


async def test_tool_definitions_are_the_sdks() -> None:
    sdk = beta_agent_toolset_20260401(AgentToolContext(workdir="/"))
    ours = sandboxed_toolset(LocalShim(Path("/")))  # type: ignore[arg-type]
    assert [t.to_dict() for t in ours] == [t.to_dict() for t in sdk]


@pytest.mark.sandbox
async def test_toolset_matches_the_sdk_in_the_sandbox(ws_root: Path, tmp_path: Path) -> None:
    sdk_root = tmp_path / "sdk"
    sdk_root.mkdir()
    populate(sdk_root)
    async with session_runtime(ws_root, session_id="sesn_parity") as r:
        await r.rt.run_call("glob", {"pattern": "*"})  # creates the workspace and starts the sandbox
        staging = ws_root / "staging"
        staging.mkdir()
        populate(staging)
        for p in staging.iterdir():
            shutil.move(str(p), r.workspace / p.name)
        if os.geteuid() == 0:
            for p in [r.workspace, *r.workspace.rglob("*")]:
                os.chown(p, 65534, 65534, follow_symlinks=False)
        await compare(CASES, sdk_root, r.tools, r.workspace, deviations=DEVIATIONS)
        # positive control: the calls above really ran in the sandbox (its uid, its private /tmp)
        proof = await r.rt.run_call("bash", {"restart": True})
        proof = await r.rt.run_call(
            "bash", {"command": "id -u; ls /tmp | wc -l; test -e /proc/1/root/etc && echo ns"}
        )
        assert proof.ok, proof.content
        uid, tmp_entries, _ = str(proof.content).split("\n")
        assert int(uid) == (65534 if os.geteuid() == 0 else os.geteuid())
        assert tmp_entries == "0"
