"""Large tool results: keep them out of the context window, keep them in the workspace.

A result whose text is estimated above the threshold (default 100,000 tokens)
is written in full to ``.inwall/outputs/<tool_use_id>.txt`` in the session's
workspace — by the worker, through an internal ``write`` call the model never
sees, so it lands where the agent's ``read`` and ``grep`` can open it, with
any worker that speaks the protocol — and the model receives a short note
instead: the path, the size, the estimate, and a head and tail preview.

Token estimate (no tokenizer download is possible inside a perimeter):
``ceil(ascii_chars / 4) + non_ascii_chars``. English text and code run about
four characters per token on Claude's and OpenAI's tokenizers; CJK and other
non-ASCII characters run about one token each, so the estimate errs on the
high side for mixed text — a result near the threshold is offloaded rather
than allowed to flood the context. Tests pin the formula.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DEFAULT_THRESHOLD_TOKENS",
    "OffloadPlan",
    "estimate_tokens",
    "offload_note",
    "offload_path",
    "threshold_for",
]

DEFAULT_THRESHOLD_TOKENS = 100_000
HEAD_CHARS = 2000
TAIL_CHARS = 1000
AGENT_KEY = "inwall_offload_threshold_tokens"


def estimate_tokens(text: str) -> int:
    ascii_chars = len(text.encode("ascii", "ignore"))  # C speed: megabytes in milliseconds
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def offload_path(tool_use_id: str) -> str:
    return f".inwall/outputs/{tool_use_id}.txt"


def threshold_for(default: int, agent_metadata: Mapping[str, str], mcp_server: str | None) -> int:
    """Per MCP server beats per agent beats the server-wide default (agent metadata carries the overrides)."""
    for key in ((f"{AGENT_KEY}:{mcp_server}",) if mcp_server else ()) + (AGENT_KEY,):
        value = agent_metadata.get(key)
        if value:
            try:
                parsed = int(value)
            except ValueError:
                continue
            if parsed > 0:
                return parsed
    return default


@dataclass(frozen=True)
class OffloadPlan:
    path: str
    size_bytes: int
    estimated_tokens: int
    threshold: int
    note: str


def offload_note(tool_use_id: str, text: str, threshold: int) -> OffloadPlan:
    path = offload_path(tool_use_id)
    size = len(text.encode("utf-8"))
    tokens = estimate_tokens(text)
    head = text[:HEAD_CHARS]
    tail = text[-TAIL_CHARS:] if len(text) > HEAD_CHARS + TAIL_CHARS else ""
    lines = [
        f"[inwall] This tool result is too large for the context window: {size:,} bytes, "
        f"about {tokens:,} tokens (the limit is {threshold:,}).",
        f"The full output is saved in the workspace at {path}. Use the read tool with view_range, "
        "or grep, to look at the parts you need.",
        f"--- first {len(head):,} characters ---",
        head,
    ]
    if tail:
        lines += [f"--- last {len(tail):,} characters ---", tail]
    return OffloadPlan(path, size, tokens, threshold, "\n".join(lines))
