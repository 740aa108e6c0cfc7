"""Render session events as a readable live transcript (rich), one line per event."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

__all__ = ["Transcript"]

_PREVIEW = 160


def _short(text: str, limit: int = _PREVIEW) -> str:
    text = text.replace("\n", " ⏎ ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _blocks_text(content: Any) -> str:
    parts = []
    for block in content or []:
        kind = getattr(block, "type", None) or (block.get("type") if isinstance(block, dict) else None)
        if kind == "text":
            parts.append(getattr(block, "text", None) or block.get("text", ""))
        else:
            parts.append(f"[{kind}]")
    return "\n".join(parts)


class Transcript:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.names: dict[str, str] = {}

    def show(self, ev: Any) -> None:
        kind = ev.type
        c = self.console
        if kind == "user.message":
            c.print(Text("👤 user", style="bold cyan"), escape(_short(_blocks_text(ev.content), 400)))
        elif kind == "agent.message":
            c.print(Text("🤖 agent", style="bold green"))
            c.print(Text(_blocks_text(ev.content)), style="green")
        elif kind in ("agent.tool_use", "agent.custom_tool_use", "agent.mcp_tool_use"):
            name = ev.name if kind != "agent.mcp_tool_use" else f"{ev.mcp_server_name}/{ev.name}"
            self.names[ev.id] = name
            where = {
                "agent.tool_use": "sandbox",
                "agent.custom_tool_use": "client",
                "agent.mcp_tool_use": "mcp",
            }[kind]
            if getattr(ev, "evaluated_permission", None) == "deny":
                where = "refused"
            c.print(
                Text(f"🔧 {name}", style="bold yellow"),
                Text(f"({where})", style="dim"),
                escape(_short(json.dumps(ev.input))),
            )
        elif kind in (
            "user.tool_result",
            "agent.tool_result",
            "agent.mcp_tool_result",
            "user.custom_tool_result",
        ):
            ref = (
                getattr(ev, "tool_use_id", None)
                or getattr(ev, "mcp_tool_use_id", None)
                or getattr(ev, "custom_tool_use_id", "")
            )
            style = "red" if getattr(ev, "is_error", False) else "dim"
            label = "✗" if getattr(ev, "is_error", False) else "↳"
            c.print(
                Text(f"   {label} {self.names.get(str(ref or ''), '')}", style=style),
                escape(_short(_blocks_text(ev.content))),
            )
        elif kind == "session.status_running":
            c.print(Text("● running", style="blue"))
        elif kind == "session.status_idle":
            c.print(Text(f"○ idle ({ev.stop_reason.type})", style="blue"))
        elif kind == "session.status_rescheduled":
            c.print(Text("↻ rescheduling: the worker was lost, waiting for another", style="magenta"))
        elif kind == "session.error":
            c.print(Text(f"⚠ {ev.error.type}: {ev.error.message}", style="red"))
