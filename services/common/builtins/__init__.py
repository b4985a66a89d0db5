"""The catalog of built-in tools: real behaviour with JSON Schemas, visible read-only in every
project as `builtins/<name>`. The registry lists and searches them; the orchestrator runs them in
process (they are our code, not user code)."""

from __future__ import annotations

from . import data, http, text  # noqa: F401  (each module registers its built-ins)
from .catalog import BuiltinTool, ToolContext, ToolError, all_tools, get

__all__ = ["BuiltinTool", "ToolContext", "ToolError", "all_tools", "get"]
