"""`inwall demo --json`, exactly as the README's first command runs it (minus the setup)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]


def test_demo_runs_the_whole_product_and_ends_with_one_json_object() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}  # the offline, scripted demo
    result = subprocess.run(
        [sys.executable, "-m", "inwall.cli.main", "demo", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {"session_id", "status", "event_types", "tool_calls", "elapsed_s"}
    assert summary["status"] == "idle"
    assert summary["tool_calls"] == 11
    kinds = summary["event_types"]
    # customer_emails is hidden by the gateway, so the model's call to it is refused by the control plane.
    assert kinds.count("agent.mcp_tool_use") == 2 and kinds.count("agent.tool_use") == 9
    assert kinds[-1] == "session.status_idle"
    # The sandbox refused /etc/shadow and the model was told so.
    assert "Permission denied" in result.stderr and "sandbox_violations" in result.stderr
    # The gateway's perimeter policy kept customer e-mails inside.
    assert "@acme.example" not in result.stderr
