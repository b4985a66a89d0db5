"""Synthetic blueprints for the registry benchmark: realistic shapes, any size."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2


def chain(count: int, salt: str = "") -> blueprint_pb2.Blueprint:
    """`count` nodes in all: a chain where each top-level node depends on the one before and
    reads its output; a mix of llm, tool (built-in, with schema-checked arguments), code and
    condition nodes (every tenth, with a then and an else node)."""
    nodes: list[dict[str, Any]] = []
    total = 0
    i = -1
    while total < count:
        i += 1
        node: dict[str, Any] = {"id": f"n{i}"}
        if i:
            node["dependsOn"] = [f"n{i - 1}"]
        previous = f"{{{{ nodes.n{i - 1}.output }}}}" if i else "{{ inputs.topic }}"
        kind = 3 if i % 10 == 9 and count - total >= 3 else i % 3
        total += 3 if kind == 3 else 1
        if kind == 0:
            node["llm"] = {"model": "deterministic",
                           "prompt": f"Step {i}{salt}: improve this: {previous}"}
        elif kind == 1:
            node["tool"] = {"component": "builtins/text_split",
                            "args": {"text": previous, "max_chars": 500 + i}}
        elif kind == 2:
            node["code"] = {"source": f"def main(inputs):\n    return len(inputs['x']) + {i}\n",
                            "args": {"x": previous}}
        else:
            node["condition"] = {
                "expression": f"size(string(nodes.n{i - 1}.output)) > {i}",
                "then": [{"id": "more", "llm": {"model": "deterministic",
                                                "prompt": f"More {i}{salt}: {previous}"}}],
                "else": [{"id": "less", "tool": {"component": "builtins/template",
                                                 "args": {"template": "x", "variables": {}}}}]}
        nodes.append(node)
    return json_format.ParseDict({"displayName": f"chain of {count}", "nodes": nodes,
                                  "output": f"nodes.n{i}.output"},
                                 blueprint_pb2.Blueprint())


def node_count(blueprint: blueprint_pb2.Blueprint) -> int:
    from services.common.blueprint import graph
    return sum(1 for _ in graph.walk(blueprint.nodes))
