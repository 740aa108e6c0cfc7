"""Hot reload: a valid edit applies, a broken one is rejected loudly and the old policy stays."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import anyio
import pytest

from inwall.errors import ConfigError
from inwall.governance import Identity, PolicyEngine, PolicyError, PolicyFile, ToolRef

ALICE = Identity("usr_alice", "user", ("engineer",))
BASH = ToolRef("bash", "builtin")
READ = ToolRef("read", "builtin")

ALLOW_BASH = 'permit (principal, action, resource == Inwall::Tool::"bash");\n'
ALLOW_READ = 'permit (principal, action, resource == Inwall::Tool::"read");\n'
BROKEN = (
    'permit (principal, action, resource == Inwall::Tool::"read");\n\nforbid (principal action, resource);\n'
)


def allowed(engine: PolicyEngine) -> list[str]:
    return [t.name for t in (BASH, READ) if engine.decide(ALICE, t, {}).allowed]


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_missing_file_at_start_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PolicyFile(tmp_path / "nope.cedar")


def test_broken_file_at_start_is_a_policy_error(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(BROKEN)
    with pytest.raises(PolicyError, match=r"p\.cedar:3:"):
        PolicyFile(path)


def test_valid_broken_fixed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(ALLOW_BASH)
    errors: list[str] = []
    policy = PolicyFile(path, on_error=errors.append)
    assert allowed(policy.engine) == ["bash"]
    assert not policy.maybe_reload()  # unchanged

    replace_atomically(path, ALLOW_READ)
    assert policy.maybe_reload()
    assert allowed(policy.engine) == ["read"]

    caplog.set_level(logging.INFO, logger="inwall.governance")
    before = policy.engine
    replace_atomically(path, BROKEN)
    assert not policy.maybe_reload()
    assert policy.engine is before
    assert allowed(policy.engine) == ["read"]
    rejected = [r for r in caplog.records if r.name == "inwall.governance" and r.levelno == logging.ERROR]
    assert len(rejected) == 1
    assert "previous policy stays in force" in rejected[0].getMessage()
    assert f"{path}:3:" in rejected[0].getMessage()
    assert len(errors) == 1 and f"{path}:3:" in errors[0]

    assert not policy.maybe_reload()  # the same broken file is not reported twice
    assert len(errors) == 1

    replace_atomically(path, ALLOW_BASH + ALLOW_READ)
    assert policy.maybe_reload()
    assert allowed(policy.engine) == ["bash", "read"]


def test_in_place_writes(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(ALLOW_BASH)
    policy = PolicyFile(path)
    with path.open("r+") as fh:  # same inode, same size: only mtime/ctime and content change
        fh.write(ALLOW_BASH.replace("bash", "read"))
    assert policy.maybe_reload()
    assert allowed(policy.engine) == ["read"]
    path.write_text(BROKEN)
    assert not policy.maybe_reload()
    assert allowed(policy.engine) == ["read"]
    path.write_text(ALLOW_BASH)
    assert policy.maybe_reload()
    assert allowed(policy.engine) == ["bash"]


def test_deleted_file_keeps_the_policy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(ALLOW_BASH)
    errors: list[str] = []
    policy = PolicyFile(path, on_error=errors.append)
    path.unlink()
    assert not policy.maybe_reload()
    assert not policy.maybe_reload()
    assert allowed(policy.engine) == ["bash"]
    assert len(errors) == 1 and "cannot stat" in errors[0]
    path.write_text(ALLOW_READ)
    assert policy.maybe_reload()
    assert allowed(policy.engine) == ["read"]


def test_an_old_unchanged_file_costs_only_a_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(ALLOW_BASH)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # outside the racy window
    policy = PolicyFile(path)
    reads: list[Path] = []
    real_read_text = Path.read_text

    def counting_read_text(self: Path, *args: object, **kwargs: object) -> str:
        reads.append(self)
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", counting_read_text)
    for _ in range(3):
        assert not policy.maybe_reload()
    assert reads == []
    path.write_text(ALLOW_READ)  # a fresh mtime: read (again while it is racy)
    assert policy.maybe_reload()
    assert reads == [path]


@pytest.mark.anyio
async def test_watch_applies_a_change(tmp_path: Path) -> None:
    path = tmp_path / "p.cedar"
    path.write_text(ALLOW_BASH)
    reloaded = anyio.Event()
    policy = PolicyFile(path, on_reload=lambda engine: reloaded.set())
    async with anyio.create_task_group() as tg:
        tg.start_soon(policy.watch, 0.01)
        replace_atomically(path, ALLOW_READ)
        with anyio.fail_after(5):
            await reloaded.wait()
        tg.cancel_scope.cancel()
    assert allowed(policy.engine) == ["read"]
