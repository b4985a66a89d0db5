"""Render the Helm chart's templates without helm (not installable here): a small interpreter
for the subset of Go templates the chart uses — values and variables, `if`/`else`, `range $k,
$v := map`, `define`/`include`, the pipes `quote`, `upper`, `default`, `not`, and whitespace
trimming. Anything else raises, so a template that drifts beyond the subset fails the test
instead of rendering wrong."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


@dataclass
class _Node:
    kind: str  # text | expr | if | range | define
    value: str = ""
    body: list["_Node"] = field(default_factory=list)
    orelse: list["_Node"] = field(default_factory=list)


def _tokens(source: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    for match in _ACTION.finditer(source):
        text = source[pos:match.start()]
        if match.group(1):
            text = text.rstrip()
        if out and out[-1][0] == "trim-next":
            out.pop()
            text = text.lstrip()
        out.append(("text", text))
        out.append(("action", match.group(2)))
        if match.group(3):
            out.append(("trim-next", ""))
        pos = match.end()
    tail = source[pos:]
    if out and out[-1][0] == "trim-next":
        out.pop()
        tail = tail.lstrip()
    out.append(("text", tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0,
           until: tuple[str, ...] = ()) -> tuple[list[_Node], int, str]:
    nodes: list[_Node] = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(_Node("text", value))
            continue
        word = value.split(" ", 1)[0]
        if word in until:
            return nodes, i, word
        if word in ("if", "range", "define"):
            node = _Node(word, value.split(" ", 1)[1])
            node.body, i, ended = _parse(tokens, i, ("end", "else"))
            if ended == "else":
                node.orelse, i, _ = _parse(tokens, i, ("end",))
            nodes.append(node)
        elif word in ("end", "else"):
            raise ValueError(f"unexpected {{{{ {value} }}}}")
        else:
            nodes.append(_Node("expr", value))
    if until:
        raise ValueError(f"missing {{{{ end }}}} (wanted {until})")
    return nodes, i, ""


class Renderer:
    def __init__(self, chart: Path, values: dict[str, Any], release: str = "ice") -> None:
        self.chart = chart
        self.root = {"Values": values, "Release": {"Name": release},
                     "Chart": {"Name": chart.name}}
        self.defines: dict[str, list[_Node]] = {}
        for helper in sorted((chart / "templates").glob("_*.tpl")):
            self._render(_parse(_tokens(helper.read_text()))[0], self.root, {"$": self.root})

    def render(self, template: str) -> str:
        source = (self.chart / "templates" / template).read_text()
        return self._render(_parse(_tokens(source))[0], self.root, {"$": self.root})

    def _render(self, nodes: list[_Node], dot: Any, scope: dict[str, Any]) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.value)
            elif node.kind == "expr":
                out.append(_text(self._eval(node.value, dot, scope)))
            elif node.kind == "if":
                branch = node.body if self._eval(node.value, dot, scope) else node.orelse
                out.append(self._render(branch, dot, scope))
            elif node.kind == "define":
                self.defines[json.loads(node.value)] = node.body
            elif node.kind == "range":
                match = re.fullmatch(r"(\$\w+),\s*(\$\w+)\s*:=\s*(.+)", node.value)
                if not match:
                    raise ValueError(f"unsupported range: {node.value}")
                items = self._eval(match.group(3), dot, scope)
                for key in sorted(items):
                    inner = dict(scope, **{match.group(1): key, match.group(2): items[key]})
                    out.append(self._render(node.body, items[key], inner))
        return "".join(out)

    def _eval(self, expression: str, dot: Any, scope: dict[str, Any]) -> Any:
        value: Any = None
        for n, command in enumerate(part.strip() for part in expression.split("|")):
            words = shlex.split(command, posix=False)
            args = [self._term(w, dot, scope) for w in words[1:]]
            if n > 0:
                args.append(value)
            name = words[0]
            if name == "quote":
                value = json.dumps(_text(args[0]))
            elif name == "upper":
                value = _text(args[0]).upper()
            elif name == "not":
                value = not args[0]
            elif name == "default":
                value = args[1] if args[1] not in (None, "", 0, False) else args[0]
            elif name == "include":
                value = self._render(self.defines[args[0]], args[1], {"$": self.root}).strip()
            elif len(words) == 1 and n == 0:
                value = self._term(name, dot, scope)
            else:
                raise ValueError(f"unsupported template function: {command}")
        return value

    def _term(self, word: str, dot: Any, scope: dict[str, Any]) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if word.startswith("$"):
            head, _, rest = word.partition(".")
            value = scope[head]
        elif word.startswith("."):
            value, rest = dot, word[1:]
        else:
            raise ValueError(f"unsupported term: {word}")
        for key in filter(None, rest.split(".")):
            value = value[key]  # a missing value is an error, not an empty string
        return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
