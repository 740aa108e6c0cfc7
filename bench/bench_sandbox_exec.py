"""Whole-process cost of one sandboxed command: `inwall sandbox exec -- true` vs bare bwrap vs srt.

Run: ``python bench/bench_sandbox_exec.py [-n 30]``. Prints median and p90 per
runner and the ratios inwall/bare and srt/inwall (target: srt/inwall >= 5).

* bare bwrap uses the same namespaces and base mounts as inwall, with no
  policy work, no seccomp and no Python: the floor.
* srt is installed into a temporary prefix with
  ``npm install --prefix DIR @anthropic-ai/sandbox-runtime`` when it is not on
  PATH; if that fails (no npm, no registry) the srt row is skipped with the reason.
* Byte-code caching is on for the inwall runs (a private PYTHONPYCACHEPREFIX),
  as it is for an installed wheel, even if the environment disables it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inwall.sandbox.policy import SandboxSettings
from inwall.sandbox.runner import prepare_workdir, sandbox_identity


def _measure(argv: list[str], n: int, *, env: dict[str, str], cwd: str, user: int | None) -> list[float]:
    kw: dict[str, object] = {}
    if user is not None:
        kw.update(user=user, group=user, extra_groups=[])
    for _ in range(3):  # warm-up: page cache, byte-code cache
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
        out.append(time.perf_counter() - t0)
    return out


def _stats(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return statistics.median(xs) * 1000, xs[min(len(xs) - 1, round(0.9 * (len(xs) - 1)))] * 1000


def _find_srt(tmp: Path) -> tuple[list[str] | None, str]:
    srt = shutil.which("srt")
    if srt:
        return [srt], "srt from PATH"
    npm = shutil.which("npm")
    if npm is None:
        return None, "npm is not installed"
    prefix = tmp / "srt"
    try:
        proc = subprocess.run(
            [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                "@anthropic-ai/sandbox-runtime",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "npm install timed out"
    cli = prefix / "node_modules" / ".bin" / "srt"
    if proc.returncode != 0 or not cli.exists():
        return None, f"npm install failed: {proc.stderr.strip()[-300:]}"
    return [str(cli)], f"srt installed into {prefix}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--no-srt", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="inwall-bench-"))
    base = Path("/srv" if os.geteuid() == 0 else tempfile.gettempdir()) / f"inwall-bench-{os.getpid()}"
    base.mkdir(mode=0o711)
    try:
        ws = prepare_workdir(base / "ws")
        uid, _ = sandbox_identity(SandboxSettings.default())
        as_user = uid if os.geteuid() == 0 else None
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
        inwall = Path(sys.executable).with_name("inwall")
        inwall_argv = [str(inwall), "sandbox", "exec", "--workdir", str(ws), "--", "true"]
        bwrap = shutil.which("bwrap") or "bwrap"
        bare_argv = [
            bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--bind", str(ws), str(ws), "--chdir", str(ws), "--", "true",
        ]  # fmt: skip
        rows: dict[str, tuple[float, float]] = {}
        rows["bare bwrap"] = _stats(_measure(bare_argv, args.n, env=env, cwd=str(ws), user=as_user))
        rows["inwall sandbox exec"] = _stats(_measure(inwall_argv, args.n, env=env, cwd=str(ws), user=None))
        srt_note = "skipped (--no-srt)"
        if not args.no_srt:
            srt_cmd, srt_note = _find_srt(tmp)
            if srt_cmd is not None:
                settings = tmp / "srt-settings.json"
                settings.write_text(
                    json.dumps(
                        {
                            "network": {"allowedDomains": [], "deniedDomains": []},
                            "filesystem": {"denyRead": [], "allowWrite": ["."], "denyWrite": []},
                        }
                    )
                )
                srt_argv = [*srt_cmd, "--settings", str(settings), "true"]
                # srt maps the caller's own uid into its namespace: it needs a workdir the caller owns
                srt_ws = tmp / "srt-ws"
                srt_ws.mkdir()
                probe = subprocess.run(
                    srt_argv, env=env, cwd=str(srt_ws), capture_output=True, text=True, check=False
                )
                if probe.returncode != 0:
                    srt_note = f"srt cannot run here (exit {probe.returncode}): {probe.stderr.strip()[-300:]}"
                else:
                    rows["srt"] = _stats(_measure(srt_argv, args.n, env=env, cwd=str(srt_ws), user=None))
        print(f"sandboxed `true`, whole process, N={args.n} (after 3 warm-up runs)")
        for name, (med, p90) in rows.items():
            print(f"  {name:<22} median {med:7.1f} ms   p90 {p90:7.1f} ms")
        inw = rows["inwall sandbox exec"][0]
        print(f"  inwall/bare (median)   {inw / rows['bare bwrap'][0]:.2f}x")
        if "srt" in rows:
            ratio = rows["srt"][0] / inw
            print(
                f"  srt/inwall (median)    {ratio:.2f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'})"
            )
        else:
            print(f"  srt: {srt_note}")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
