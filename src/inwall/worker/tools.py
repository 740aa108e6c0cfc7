"""The six ``agent_toolset_20260401`` tools, as the SDK defines them, running in a session's sandbox.

Each tool is the SDK's own :class:`~anthropic.lib.tools.BetaAsyncFunctionTool`
around a function with the SDK tool's exact signature, so input validation
(pydantic ``validate_call``: unknown keys rejected, lax coercion), the
error for bad input (``ValueError('Invalid arguments for function read')``),
the name, the description and the input schema are the SDK's. Only the body
differs: it sends the call to the session's sandboxed shim.

Cleanup: the SDK runner calls each tool's ``aclose`` when the session run
ends; the first one closes the session's sandbox (last snapshot included).

The input as the model wrote it travels beside the validated arguments (a
context variable set by :meth:`SandboxedTool.call`), because the identity
token's ``input_sha256`` is over that input: ``{"command": "ls",
"timeout_ms": null}`` and ``{"command": "ls"}`` are different calls to
the control plane.

One deliberate deviation from the SDK's tools: bash returns up to
``inwall.limits.output_bytes`` of output (8 MiB at most, the default)
instead of the last 100 KiB, so that a large output reaches the control
plane whole and is offloaded to a file the model can read, rather than cut
in the worker. Beyond the limit the SDK's ``[output truncated]`` tail holds
(see :mod:`inwall.worker._shim`).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from anthropic.lib.tools import BetaAsyncFunctionTool
from anthropic.types.beta import (
    BetaManagedAgentsAgentToolset20260401BashInput,
    BetaManagedAgentsAgentToolset20260401EditInput,
    BetaManagedAgentsAgentToolset20260401GlobInput,
    BetaManagedAgentsAgentToolset20260401GrepInput,
    BetaManagedAgentsAgentToolset20260401ReadInput,
    BetaManagedAgentsAgentToolset20260401WriteInput,
)

if TYPE_CHECKING:
    from inwall.worker.runtime import SessionRuntime

__all__ = ["TOOL_NAMES", "SandboxedTool", "sandboxed_toolset"]

TOOL_NAMES = ("bash", "read", "write", "edit", "glob", "grep")

_RAW_INPUT: ContextVar[dict[str, Any] | None] = ContextVar("inwall_worker_raw_input", default=None)


class SandboxedTool(BetaAsyncFunctionTool[Any]):
    """An SDK function tool whose cleanup closes the session's sandbox."""

    def __init__(
        self,
        func: Callable[..., Coroutine[Any, Any, Any]],
        *,
        name: str,
        input_schema: Any,
        runtime: SessionRuntime,
    ):
        super().__init__(func, name=name, input_schema=input_schema)
        self.runtime = runtime

    async def call(self, input: object) -> Any:
        """The SDK's call (validation, then the function), with the raw input kept for the perimeter."""
        token = _RAW_INPUT.set(dict(input) if isinstance(input, dict) else None)
        try:
            return await super().call(input)
        finally:
            _RAW_INPUT.reset(token)

    async def aclose(self) -> None:
        await self.runtime.aclose()


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def sandboxed_toolset(rt: SessionRuntime) -> list[SandboxedTool]:
    """bash, read, write, edit, glob, grep (the SDK's order) bound to ``rt``."""

    async def bash(
        command: str | None = None, restart: bool | None = None, timeout_ms: int | None = None
    ) -> Any:
        """Run a command in a persistent bash shell."""
        args = _drop_none(command=command, restart=restart, timeout_ms=timeout_ms)
        return await rt.call("bash", args, raw_input=_RAW_INPUT.get())

    async def read(file_path: str, view_range: list[int] | None = None) -> Any:
        """Read a file rooted at the working directory."""
        return await rt.call(
            "read", _drop_none(file_path=file_path, view_range=view_range), raw_input=_RAW_INPUT.get()
        )

    async def write(file_path: str, content: str) -> Any:
        """Write a file, creating parent directories as needed."""
        return await rt.call(
            "write", {"file_path": file_path, "content": content}, raw_input=_RAW_INPUT.get()
        )

    async def edit(file_path: str, old_string: str, new_string: str, replace_all: bool | None = None) -> Any:
        """Replace text in a file by exact string match."""
        args = _drop_none(
            file_path=file_path, old_string=old_string, new_string=new_string, replace_all=replace_all
        )
        return await rt.call("edit", args, raw_input=_RAW_INPUT.get())

    async def glob(pattern: str, path: str | None = None) -> Any:
        """List files matching a glob pattern, newest first."""
        return await rt.call("glob", _drop_none(pattern=pattern, path=path), raw_input=_RAW_INPUT.get())

    async def grep(pattern: str, path: str | None = None) -> Any:
        """Search file contents for a regular expression."""
        return await rt.call("grep", _drop_none(pattern=pattern, path=path), raw_input=_RAW_INPUT.get())

    schemas = (
        (bash, BetaManagedAgentsAgentToolset20260401BashInput),
        (read, BetaManagedAgentsAgentToolset20260401ReadInput),
        (write, BetaManagedAgentsAgentToolset20260401WriteInput),
        (edit, BetaManagedAgentsAgentToolset20260401EditInput),
        (glob, BetaManagedAgentsAgentToolset20260401GlobInput),
        (grep, BetaManagedAgentsAgentToolset20260401GrepInput),
    )
    return [SandboxedTool(fn, name=fn.__name__, input_schema=schema, runtime=rt) for fn, schema in schemas]
