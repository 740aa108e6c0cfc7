"""The ``agent_toolset_20260401`` tools as the model sees them.

Input schemas match the SDK's toolset exactly and forbid extra keys: the
SDK's worker rejects any key it does not declare, so offering the model a
looser schema would only produce failed calls.
"""

from __future__ import annotations

from typing import Any

from inwall.agent.models.base import ToolSpec

__all__ = ["BUILTIN_ORDER", "SERVER_SIDE_TOOLS", "WORKER_TOOLS", "builtin_spec"]

# Served by the environment worker, in the order the SDK's toolset lists them.
WORKER_TOOLS = ("bash", "read", "write", "edit", "glob", "grep")
# Part of the toolset but run by Anthropic's hosted infrastructure; a self-hosted
# perimeter has no such service, so inwall accepts the config but never offers them.
SERVER_SIDE_TOOLS = ("web_fetch", "web_search")
BUILTIN_ORDER = WORKER_TOOLS

_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "bash": (
        "Run a command in a persistent bash shell. The working directory, exported variables and "
        "background jobs persist between calls. Set restart to true to start a fresh shell.",
        {
            "type": "object",
            "properties": {
                "command": {
                    "type": "string",
                    "description": "The command to run. Omit only when restart is true.",
                },
                "restart": {
                    "type": "boolean",
                    "description": "Restart the shell instead of running a command.",
                },
                "timeout_ms": {"type": "integer", "description": "Timeout in milliseconds (default 120000)."},
            },
            "additionalProperties": False,
        },
    ),
    "read": (
        "Read a text file (or an image/PDF) rooted at the working directory. Use view_range "
        "[start_line, end_line] (1-based, end <= 0 means end of file) for large files.",
        {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "view_range": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            },
            "required": ["file_path"],
            "additionalProperties": False,
        },
    ),
    "write": (
        "Write a file, creating parent directories as needed. Overwrites an existing file.",
        {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["file_path", "content"],
            "additionalProperties": False,
        },
    ),
    "edit": (
        "Replace text in a file by exact string match. old_string must be unique unless replace_all is true.",
        {
            "type": "object",
            "properties": {
                "file_path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "replace_all": {"type": "boolean"},
            },
            "required": ["file_path", "old_string", "new_string"],
            "additionalProperties": False,
        },
    ),
    "glob": (
        "List files matching a glob pattern (relative, ** for recursion), newest first.",
        {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
            "required": ["pattern"],
            "additionalProperties": False,
        },
    ),
    "grep": (
        "Search file contents for a regular expression; prints path:line:text.",
        {
            "type": "object",
            "properties": {"pattern": {"type": "string"}, "path": {"type": "string"}},
            "required": ["pattern"],
            "additionalProperties": False,
        },
    ),
}


def builtin_spec(name: str) -> ToolSpec:
    description, schema = _SPECS[name]
    return ToolSpec(name=name, description=description, input_schema=schema)
