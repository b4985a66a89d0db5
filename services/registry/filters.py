"""List filters (a subset of AIP-160): `field op value` terms joined by AND.

    display_name = "hello"          create_time > "2026-01-01T00:00:00Z"
    kind = TOOL AND builtin = false tags: "web"          display_name: "report"

`:` means "has": a tag in `tags`, or a case-insensitive substring of a text field. Each
collection declares its fields and their types; anything else is INVALID_ARGUMENT on `filter`
with the position of the mistake.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from services.common import errors

from .store import Condition

MAX_FILTER_CHARS = 2000

_TOKEN = re.compile(r"""\s*(?:(?P<op><=|>=|!=|=|<|>|:)|(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
                       |(?P<word>[A-Za-z0-9_.+\-]+)|(?P<paren>[()])|(?P<bad>\S))""", re.X)

# field type → allowed operators
_OPS = {"string": {"=", "!=", ":"}, "timestamp": {"=", "!=", "<", "<=", ">", ">="},
        "kind": {"=", "!="}, "bool": {"=", "!="}, "tags": {":"}}

BLUEPRINT_FIELDS = {"display_name": "string", "description": "string",
                    "create_time": "timestamp", "update_time": "timestamp"}
COMPONENT_FIELDS = {**BLUEPRINT_FIELDS, "kind": "kind", "builtin": "bool", "tags": "tags"}
KINDS = ("tool", "agent", "code", "workflow")


def _bad(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument.field("filter", message, "BAD_FILTER")


def parse(text: str, fields: dict[str, str]) -> list[Condition]:
    """The conditions of a filter; all must hold."""
    if len(text) > MAX_FILTER_CHARS:
        raise _bad(f"is longer than {MAX_FILTER_CHARS} characters")
    tokens: list[tuple[str, str, int]] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            break
        kind = match.lastgroup or ""
        value = match.group(kind) if kind else ""
        if kind == "bad":
            raise _bad(f"unexpected {value!r} at position {match.start(kind) + 1}")
        if kind == "paren":
            raise _bad("parentheses are not supported; join terms with AND")
        tokens.append((kind, value, match.start(kind) + 1))
        position = match.end()
    conditions: list[Condition] = []
    index = 0
    known = ", ".join(sorted(fields))
    while index < len(tokens):
        if conditions:
            kind, word, at = tokens[index]
            if kind == "word" and word.upper() == "OR":
                raise _bad(f"OR (position {at}) is not supported; terms are joined by AND")
            if kind != "word" or word.upper() != "AND":
                raise _bad(f"expected AND at position {at}, found {word!r}")
            index += 1
        if index + 3 > len(tokens):
            where = tokens[index][2] if index < len(tokens) else len(text) + 1
            raise _bad(f"incomplete term at position {where}; write `field op value`, "
                       f"e.g. display_name = \"x\"")
        (k1, name, at), (k2, op, op_at), (k3, raw, value_at) = tokens[index:index + 3]
        if k1 != "word" or name not in fields:
            raise _bad(f"unknown field {name!r} at position {at}; filterable fields: {known}")
        if k2 != "op":
            raise _bad(f"expected an operator after {name!r} at position {op_at}, found "
                       f"{op!r}")
        ftype = fields[name]
        if op not in _OPS[ftype]:
            raise _bad(f"{name} does not support {op!r} (position {op_at}); use "
                       f"{' '.join(sorted(_OPS[ftype]))}")
        if k3 == "op":
            raise _bad(f"expected a value at position {value_at}, found {raw!r}")
        conditions.append(Condition(name, op, _value(name, ftype, k3, raw, value_at)))
        index += 3
    return conditions


def _value(name: str, ftype: str, kind: str, raw: str, at: int) -> Any:
    text = _unquote(raw) if kind == "str" else raw
    if ftype == "timestamp":
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(f"{text!r} (position {at}) is not a timestamp; use RFC 3339, e.g. "
                       f"\"2026-01-01T00:00:00Z\"") from None
        if value.tzinfo is None:
            raise _bad(f"{text!r} (position {at}) has no time zone; add Z or +hh:mm")
        return value
    if ftype == "kind":
        kind_name = text.lower().removeprefix("component_kind_")
        if kind_name not in KINDS:
            raise _bad(f"{text!r} (position {at}) is not a kind; use TOOL, AGENT, CODE or "
                       "WORKFLOW")
        return kind_name
    if ftype == "bool":
        if text.lower() not in ("true", "false"):
            raise _bad(f"{name} is true or false, not {text!r} (position {at})")
        return text.lower() == "true"
    return text


def _unquote(raw: str) -> str:
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def matches(conditions: list[Condition], record: dict[str, Any]) -> bool:
    """Evaluate conditions against a record in Python (the built-ins, which live in code)."""
    for c in conditions:
        value = record.get(c.field)
        if c.op == ":":
            if c.field == "tags":
                if c.value not in (value or ()):
                    return False
            elif str(c.value).lower() not in str(value or "").lower():
                return False
            continue
        if value is None:
            return False
        ok = {"=": value == c.value, "!=": value != c.value, "<": value < c.value,
              "<=": value <= c.value, ">": value > c.value, ">=": value >= c.value}[c.op]
        if not ok:
            return False
    return True
