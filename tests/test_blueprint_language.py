"""The shared blueprint machinery: CEL, sandboxed Jinja, graph rules and structural validation.
(The registry's corpus of invalid blueprints lives with the registry tests.)"""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from services.common import builtins
from services.common.blueprint import expressions, graph, templates
from services.common.blueprint.validate import validate_blueprint


def bp(spec: dict) -> blueprint_pb2.Blueprint:  # type: ignore[type-arg]
    return json_format.ParseDict(spec, blueprint_pb2.Blueprint())


def test_cel_sees_json_numbers_as_ints_when_integral() -> None:
    assert expressions.evaluate("inputs.n + 1", {"inputs": {"n": 2.0}}) == 3
    assert expressions.evaluate("nodes.a.output.items.map(x, x * 2)",
                                {"nodes": {"a": {"output": {"items": [1.0, 2.0]}}}}) == [2, 4]


def test_cel_errors_are_user_readable() -> None:
    with pytest.raises(expressions.ExpressionError, match="Syntax error"):
        expressions.compile_expression("1 +")
    with pytest.raises(expressions.ExpressionError, match="no such key 'q'"):
        expressions.evaluate("inputs.q", {"inputs": {}})
    with pytest.raises(expressions.ExpressionError, match="division by zero"):
        expressions.evaluate("1 / 0", {})


def test_cel_node_references_ignore_string_literals() -> None:
    compiled = expressions.compile_expression(
        'nodes.a.output + nodes["b"].output + "nodes.c"')
    assert compiled.node_refs == {"a", "b"}


def test_cel_sees_the_same_nodes_whether_or_not_the_context_is_trimmed() -> None:
    """An expression that names its nodes statically is evaluated with only those nodes; one
    that uses `nodes` as a whole sees every node."""
    context = {"inputs": {"k": "b"},
               "nodes": {"a": {"output": [1, 3]}, "b": {"output": 2}, "c": {"output": 5}}}
    assert expressions.compile_expression("nodes.a.output[1] + nodes['b'].output").static_nodes
    assert expressions.evaluate("nodes.a.output[1] + nodes['b'].output", context) == 5
    assert expressions.evaluate("has(nodes.z)", context) is False
    for whole, value in [("size(nodes)", 3), ("nodes[inputs.k].output", 2),
                         ("nodes.exists(k, k == 'c')", True), ("nodes.all(k, k != 'a')", False),
                         ("'c' in nodes", True)]:
        assert not expressions.compile_expression(whole).static_nodes, whole
        assert expressions.evaluate(whole, context) == value, whole
    with pytest.raises(expressions.ExpressionError, match="no such key 'z'"):
        expressions.evaluate("nodes.z.output", context)


def test_templates_are_strict_and_sandboxed() -> None:
    assert templates.render("Hi {{ inputs.name | upper }}", {"inputs": {"name": "ada"}}) == \
        "Hi ADA"
    with pytest.raises(templates.TemplateError, match="undefined"):
        templates.render("{{ inputs.missing }}", {"inputs": {}})
    with pytest.raises(templates.TemplateError, match="unsafe"):
        templates.render("{{ inputs.__class__.__mro__ }}", {"inputs": {}})
    assert templates.compile_template("{{ nodes.a.output }} {{ nodes['b'] }}").node_refs == \
        {"a", "b"}


def test_graph_order_cycles_and_paths() -> None:
    spec = bp({"nodes": [{"id": "c", "dependsOn": ["b"], "llm": {}},
                         {"id": "a", "llm": {}}, {"id": "b", "dependsOn": ["a"], "llm": {}}]})
    assert graph.topological_order(spec.nodes) == ["a", "b", "c"]
    assert graph.closures(spec.nodes)["c"] == {"a", "b"}
    cyclic = bp({"nodes": [{"id": "a", "dependsOn": ["b"], "llm": {}},
                           {"id": "b", "dependsOn": ["a"], "llm": {}}]})
    assert graph.find_cycle(cyclic.nodes) == ["a", "b", "a"]
    assert graph.run_path("each[2]", "", "fetch") == "each[2].fetch"
    assert graph.run_path("check", "then", "notify") == "check.then.notify"


def test_validation_reports_every_violation_with_paths() -> None:
    spec = bp({"nodes": [
        {"id": "greet", "llm": {"model": "deterministic", "prompt": "Hi {{ nodes.later.output }}"}},
        {"id": "later", "dependsOn": ["greet", "ghost"], "tool": {"component": "builtins/template"}},
        {"id": "each", "loop": {"items": "inputs.xs", "body": [
            {"id": "x", "llm": {"model": "deterministic", "prompt": "{{ item }}"}},
            {"id": "x", "llm": {"model": "deterministic", "prompt": "ok"}}]}},
    ]})
    found = {(v.field, v.reason) for v in validate_blueprint(spec, prefix="blueprint")}
    assert found == {
        ("blueprint.nodes[0].llm.prompt", "NODE_OUT_OF_SCOPE"),
        ("blueprint.nodes[1].depends_on[1]", "UNKNOWN_DEPENDENCY"),
        ("blueprint.nodes[2].loop.body[1].id", "DUPLICATE_ID"),
    }


def test_a_valid_blueprint_has_no_violations() -> None:
    spec = bp({"displayName": "hello", "output": "nodes.upper.output", "nodes": [
        {"id": "greet", "llm": {"model": "deterministic", "prompt": "Hello {{ inputs.name }}"}},
        {"id": "upper", "dependsOn": ["greet"], "tool": {
            "component": "builtins/template",
            # The tool's own template is a CEL string literal, so the engine does not render
            # it as an argument template first.
            "argExpressions": {"template": "'{{ v | upper }}'",
                               "variables": "{'v': nodes.greet.output}"}}}]})
    assert validate_blueprint(spec) == []


def test_builtin_tools_run() -> None:
    template = builtins.get("builtins/template")
    assert template is not None
    out = asyncio.run(template.run({"template": "{{ a }}-{{ b }}", "variables": {"a": 1, "b": 2}},
                                   builtins.ToolContext(project_id="p")))
    assert out == {"text": "1-2"}
    transform = builtins.get("json_transform")
    assert transform is not None
    out = asyncio.run(transform.run({"expression": "input.map(x, x.n).filter(n, n > 1)",
                                     "input": [{"n": 1}, {"n": 2}, {"n": 3}]},
                                    builtins.ToolContext(project_id="p")))
    assert out == {"result": [2, 3]}
    with pytest.raises(builtins.ToolError):
        asyncio.run(transform.run({"expression": "input.nope", "input": {}},
                                  builtins.ToolContext(project_id="p")))


def test_page_tokens_are_tamper_checked_and_scoped() -> None:
    from services.common import errors, pagination
    scope = pagination.scope_for("runs", "projects/a", "state = RUNNING")
    token = pagination.encode({"after": "r-9"}, scope=scope)
    assert pagination.decode(token, scope=scope) == {"after": "r-9"}
    body, signature = token.split(".")
    forged = pagination.encode({"after": "r-1"}, scope="other").split(".")[0]
    for bad, bad_scope in [(f"{forged}.{signature}", scope), (token, "runs:projects/b:x"),
                           ("garbage", scope)]:
        with pytest.raises(errors.InvalidArgument, match="page_token"):
            pagination.decode(bad, scope=bad_scope)
    with pytest.raises(errors.InvalidArgument, match="page_size"):
        pagination.page_size(5000)
