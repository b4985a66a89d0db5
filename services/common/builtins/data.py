"""Data built-ins: `json_schema_validate` checks a JSON value against a JSON Schema and lists
every error with its path."""

from __future__ import annotations

import warnings
from typing import Any

import jsonschema

from .catalog import BuiltinTool, ToolContext, ToolError, register

MAX_ERRORS = 100


def _path(parts: Any) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


async def json_schema_validate(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    schema = args.get("schema")
    if not isinstance(schema, (dict, bool)):
        raise ToolError("schema is required and must be a JSON Schema object", "BAD_ARGUMENT")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolError(f"the schema is not a valid JSON Schema at "
                        f"{_path(exc.absolute_path)}: {exc.message}", "BAD_SCHEMA") from None
    errors = []
    for error in sorted(cls(schema).iter_errors(args.get("instance")),
                        key=lambda e: list(map(str, e.absolute_path))):
        errors.append({"path": _path(error.absolute_path), "message": error.message})
        if len(errors) >= MAX_ERRORS:
            break
    return {"valid": not errors, "errors": errors}


register(BuiltinTool(
    name="json_schema_validate",
    display_name="Validate JSON against a schema",
    description="Check that a JSON value conforms to a JSON Schema: verify structure, required "
                "fields and types, and list every error with its path.",
    input_schema={"type": "object", "required": ["schema", "instance"],
                  "additionalProperties": False,
                  "properties": {"schema": {"type": ["object", "boolean"]}, "instance": {}}},
    output_schema={"type": "object", "properties": {
        "valid": {"type": "boolean"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "path": {"type": "string"}, "message": {"type": "string"}}}}}},
    run=json_schema_validate, tags=("json", "schema", "validation")))
