"""Built-in tool definitions and the lookup by name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from services.common.blueprint import expressions, templates


class ToolError(Exception):
    """A tool failed in a way the user should see (bad arguments, a refused request)."""

    def __init__(self, message: str, reason: str = "TOOL_ERROR", *,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class ToolContext:
    project_id: str
    # `run/node/attempt`: lets a tool make its side effects idempotent.
    idempotency_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltinTool:
    name: str
    display_name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    run: Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
    tags: tuple[str, ...] = ()

    @property
    def resource_name(self) -> str:
        return f"builtins/{self.name}"


async def _template(args: dict[str, Any], ctx: ToolContext) -> Any:
    try:
        text = templates.compile_template(args["template"]).render(
            dict(args.get("variables") or {}))
    except templates.TemplateError as exc:
        raise ToolError(str(exc), "BAD_TEMPLATE") from None
    return {"text": text}


async def _json_transform(args: dict[str, Any], ctx: ToolContext) -> Any:
    try:
        result = expressions.compile_expression(args["expression"]).evaluate(
            {"input": args.get("input")})
        expressions.check_size(result)
    except expressions.ExpressionError as exc:
        raise ToolError(str(exc), "BAD_EXPRESSION") from None
    return {"result": result}


_TOOLS: dict[str, BuiltinTool] = {}


def register(tool: BuiltinTool) -> BuiltinTool:
    if tool.name in _TOOLS:
        raise ValueError(f"built-in {tool.name!r} registered twice")
    _TOOLS[tool.name] = tool
    return tool


register(BuiltinTool(
    name="template",
    display_name="Text template",
    description="Render text from a Jinja template and variables: format a message, a report "
                "or a prompt.",
    input_schema={"type": "object", "required": ["template"], "additionalProperties": False,
                  "properties": {"template": {"type": "string"},
                                 "variables": {"type": "object"}}},
    output_schema={"type": "object", "properties": {"text": {"type": "string"}}},
    run=_template, tags=("text",)))

register(BuiltinTool(
    name="json_transform",
    display_name="JSON transform",
    description="Reshape, filter or compute JSON data with a CEL expression over `input`: pick "
                "fields, map lists, count or sum values.",
    input_schema={"type": "object", "required": ["expression"], "additionalProperties": False,
                  "properties": {"expression": {"type": "string"}, "input": {}}},
    output_schema={"type": "object", "properties": {"result": {}}},
    run=_json_transform, tags=("json", "data")))


def get(name: str) -> BuiltinTool | None:
    """The built-in called `name` (with or without the `builtins/` prefix)."""
    return _TOOLS.get(name.removeprefix("builtins/"))


def all_tools() -> list[BuiltinTool]:
    return sorted(_TOOLS.values(), key=lambda t: t.name)
