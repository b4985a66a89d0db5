"""CEL expressions (common-expression-language): typed, side-effect free, bounded.

Expressions see `inputs`, `nodes` (`nodes.<id>.output`, `nodes.<id>.error`) and, inside a loop
body, `item` and `index`. JSON numbers arrive as doubles through protobuf Struct; integral ones
are given to CEL as ints so `inputs.count + 1` works as a user expects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cel

MAX_EXPRESSION_CHARS = 4096
MAX_RESULT_BYTES = 2 * 1024 * 1024
_MAX_SAFE_INT = 2**53

# `nodes.<id>` or `nodes["<id>"]` / `nodes['<id>']` outside string literals.
_NODE_REF = re.compile(r"""\bnodes\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['"])([^'"]+)\2\s*\])""")
_STRING_LITERAL = re.compile(r"""(?:[rRbB]{0,2})("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")


class ExpressionError(ValueError):
    """The expression does not compile, or failed while evaluating. `message` is for users."""


@dataclass(frozen=True)
class Expression:
    source: str
    program: Any
    # Top-level variables the expression reads (`inputs`, `nodes`, `item`, …).
    variables: frozenset[str]
    # Node ids it reads through `nodes.<id>`.
    node_refs: frozenset[str]
    # Every use of `nodes` is one of those references (not `nodes[inputs.k]`, `size(nodes)`):
    # the other nodes' outputs need not be converted for it.
    static_nodes: bool = False

    def evaluate(self, context: dict[str, Any]) -> Any:
        # Convert only what the expression reads: a long chain's context holds every finished
        # node, and converting all of them for each expression is quadratic in the run.
        context = {k: v for k, v in context.items() if k in self.variables}
        nodes = context.get("nodes")
        if self.static_nodes and isinstance(nodes, dict):
            context["nodes"] = {k: nodes[k] for k in self.node_refs if k in nodes}
        try:
            result = self.program.execute(to_cel(context))
        except KeyError as exc:
            raise ExpressionError(f"no such key {exc.args[0]!r} in {self.source!r}") from None
        except ZeroDivisionError:
            raise ExpressionError(f"division by zero in {self.source!r}") from None
        except Exception as exc:  # the CEL runtime's type and overflow errors
            raise ExpressionError(f"{self.source!r} failed: {_first_line(exc)}") from None
        return from_cel(result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# `nodes` used otherwise than as `nodes.<id>` / `nodes[""]` (string literals blanked): as a
# whole (`size(nodes)`, `nodes.exists(…)`, `nodes[inputs.k]`). Not a field (`inputs.nodes`).
_OTHER_NODES_USE = re.compile(
    r"""(?<![.\w])nodes\b(?!\s*(?:\.\s*[A-Za-z_][A-Za-z0-9_]*\b(?!\s*\()"""
    r"""|\[\s*(?:""|'')\s*\]))""")


def only_static_node_references(source: str) -> bool:
    return not _OTHER_NODES_USE.search(_STRING_LITERAL.sub('""', source))


def node_references(source: str) -> frozenset[str]:
    code = _STRING_LITERAL.sub('""', source)
    refs = set()
    for match in _NODE_REF.finditer(code):
        refs.add(match.group(1) or match.group(3))
    # String literals were blanked above, so bracket references are read from the original.
    for match in _NODE_REF.finditer(source):
        if match.group(3):
            refs.add(match.group(3))
    return frozenset(refs)


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Compile once (cached); raises ExpressionError with the parser's message."""
    if not source.strip():
        raise ExpressionError("the expression is empty")
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        program = cel.compile(source)
    except Exception as exc:
        message = str(exc).strip()
        message = message.replace(f"Failed to parse expression '{source}': ", "")
        raise ExpressionError(" ".join(message.split())) from None
    return Expression(source=source, program=program,
                      variables=frozenset(program.variables()),
                      node_refs=node_references(source),
                      static_nodes=only_static_node_references(source))


def evaluate(source: str, context: dict[str, Any]) -> Any:
    return compile_expression(source).evaluate(context)


def to_cel(value: Any) -> Any:
    """JSON-ish Python → CEL input: integral doubles become ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: to_cel(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cel(v) for v in value]
    return value


def from_cel(value: Any) -> Any:
    """CEL result → JSON-serialisable Python (bytes as UTF-8 text, timestamps as RFC 3339)."""
    if isinstance(value, dict):
        return {str(k): from_cel(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [from_cel(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return f"{value.total_seconds()}s"
    return value


def check_size(value: Any, limit: int = MAX_RESULT_BYTES) -> int:
    """The JSON size of a value, raising ExpressionError above `limit`."""
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > limit:
        raise ExpressionError(f"the result is {size} bytes, more than the limit of {limit}")
    return size
