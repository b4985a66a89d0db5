"""Validation and authoring without a server: limits (node count, depth, size), long chains
without recursion, every violation reported, the YAML/JSON loader's errors, workflow cycles."""

from __future__ import annotations

import pytest
from iceos.registry.v1 import blueprint_pb2

from bench.registry.blueprints import chain
from services.common import errors
from services.common.blueprint import validate
from services.common.blueprint.authoring import blueprint_to_yaml, load_blueprint
from services.common.blueprint.validate import WorkflowIndex, validate_blueprint
from services.registry.references import builtin_info


def reasons(spec: blueprint_pb2.Blueprint, **kwargs) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(v.field, v.reason) for v in validate_blueprint(spec, **kwargs)]


def test_a_thousand_node_chain_validates_without_recursion_limits() -> None:
    spec = chain(1000)
    assert validate_blueprint(spec, lookup=builtin_info) == []
    # A straight dependency chain of 1,000 siblings: the last node sees the first.
    nodes = [{"id": "n0", "llm": {"model": "m", "prompt": "start"}}] + [
        {"id": f"n{i}", "dependsOn": [f"n{i - 1}"],
         "llm": {"model": "m", "prompt": f"{{{{ nodes.n0.output }}}} {i}"}} for i in range(1, 1000)]
    from tests.support.registry import blueprint
    assert validate_blueprint(blueprint({"nodes": nodes})) == []


def test_node_count_and_size_limits() -> None:
    too_many = chain(1001)
    assert reasons(too_many) == [("nodes", "TOO_MANY_NODES")]
    small = validate.Limits(max_nodes=10)
    assert reasons(chain(11), limits=small) == [("nodes", "TOO_MANY_NODES")]
    huge = blueprint_pb2.Blueprint(nodes=[blueprint_pb2.Node(
        id="big", llm=blueprint_pb2.LlmNode(model="m", prompt="x" * (5 * 1024 * 1024)))])
    assert reasons(huge, prefix="blueprint") == [("blueprint", "TOO_LARGE")]
    long_name = chain(3)
    long_name.display_name = "n" * 300
    long_name.description = "d" * 20000
    assert reasons(long_name) == [("display_name", "TOO_LONG"), ("description", "TOO_LONG")]


def test_violations_are_capped_but_counted() -> None:
    nodes = [blueprint_pb2.Node(id="dup", llm=blueprint_pb2.LlmNode(model="m", prompt="p"))
             for _ in range(700)]
    found = validate_blueprint(blueprint_pb2.Blueprint(nodes=nodes))
    assert len(found) == 501
    assert found[-1].reason == "TRUNCATED" and "199 more" in found[-1].description


def test_scope_rules_across_nesting() -> None:
    from tests.support.registry import blueprint
    spec = blueprint({"nodes": [
        {"id": "a", "llm": {"model": "m", "prompt": "a"}},
        {"id": "b", "dependsOn": ["a"], "loop": {"items": "nodes.a.output", "body": [
            {"id": "x", "llm": {"model": "m", "prompt": "{{ nodes.a.output }} {{ item }}"}},
            {"id": "y", "dependsOn": ["x"], "llm": {"model": "m",
                                                   "prompt": "{{ nodes.x.output }} {{ index }}"}},
            {"id": "z", "llm": {"model": "m", "prompt": "{{ nodes.y.output }}"}}],
            "collect": "{'x': nodes.x.output, 'z': nodes.z.output}"}},
        {"id": "c", "llm": {"model": "m", "prompt": "{{ nodes.b.output }}"}},
    ], "output": "nodes.c.output"})
    assert reasons(spec) == [("nodes[1].loop.body[2].llm.prompt", "NODE_OUT_OF_SCOPE"),
                             ("nodes[2].llm.prompt", "NODE_OUT_OF_SCOPE")]


def test_workflow_index_finds_cycles_through_several_hops() -> None:
    index = WorkflowIndex(project="p", self_key=("blueprint", "a", 0), edges={
        ("blueprint", "b", 0): [("component", "w", 0)],
        ("component", "w", 0): [("blueprint", "c", 2)],
        ("blueprint", "c", 2): [("blueprint", "a", 0)],
        ("blueprint", "d", 0): [],
    })
    assert index.cycle_from(("blueprint", "b", 0)) == [
        ("blueprint", "b", 0), ("component", "w", 0), ("blueprint", "c", 2),
        ("blueprint", "a", 0)]
    assert index.cycle_from(("blueprint", "d", 0)) is None
    assert index.key("blueprint", "projects/p/blueprints/b") == ("blueprint", "b", 0)
    assert index.key("blueprint", "projects/other/blueprints/b") is None
    assert index.key("component", "Bad Name") is None


def test_loader_reports_every_shape_mistake_with_paths() -> None:
    text = """
displayName: demo
nodez: []
nodes:
  - id: a
    llm: {model: m, prompt: p, temprature: 1}
  - id: b
    lop: {}
  - id: c
    dependsOn: a
    timeout: 5
    llm: {model: m, prompt: p}
    tool: {component: x}
"""
    with pytest.raises(errors.InvalidArgument) as info:
        load_blueprint(text)
    assert sorted((v.field, v.reason) for v in info.value.violations) == [
        ("nodes[0].llm.temprature", "UNKNOWN_FIELD"),
        ("nodes[1].lop", "UNKNOWN_NODE_KIND"),
        ("nodes[2].depends_on", "WRONG_TYPE"),
        ("nodes[2].timeout", "WRONG_TYPE"),
        ("nodes[2].tool", "MULTIPLE_KINDS"),
        ("nodez", "UNKNOWN_FIELD"),
    ]


@pytest.mark.parametrize("text, reason", [
    ("", "EMPTY"), ("- just\n- a list\n", "WRONG_TYPE"), ("nodes: [\n", "SYNTAX"),
    ("nodes: []\nnodes: []\n", "SYNTAX"), (b"nodes: [\xff]", "INVALID_UTF8"),
    ("a:\n" + "".join("  " * i + "- b:\n" for i in range(1, 80)), "TOO_DEEP"),
])
def test_loader_refuses_bad_documents(text, reason) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidArgument) as info:
        load_blueprint(text)
    assert [v.reason for v in info.value.violations][:1] == [reason]


def test_yaml_and_json_load_the_same_blueprint() -> None:
    from_yaml = load_blueprint("""
nodes:
  - id: greet
    depends_on: []
    llm: {model: deterministic, prompt: "Hi {{ inputs.name }}"}
    timeout: 30s
    onError: ON_ERROR_CONTINUE
""")
    from_json = load_blueprint('{"nodes": [{"id": "greet", "llm": {"model": "deterministic",'
                               ' "prompt": "Hi {{ inputs.name }}"}, "timeout": "30s",'
                               ' "on_error": "ON_ERROR_CONTINUE"}]}')
    assert from_yaml == from_json
    assert load_blueprint(blueprint_to_yaml(from_yaml)) == from_yaml
