"""Blueprint validation: every violation at once, each with a field path and a fix.

Used by the registry before saving and by the orchestrator at StartRun. Component references are
checked through a synchronous `lookup` the caller fills beforehand (collect the references with
`component_references`, load them, then validate), so this module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2

from services.common.errors import FieldViolation

from . import graph
from .expressions import ExpressionError, compile_expression
from .templates import TemplateError, compile_template, is_template

NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
# Names a template may use besides the ones the blueprint provides (Jinja globals).
_JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop"})


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 1000
    max_depth: int = 16
    max_retry_attempts: int = 20
    max_agent_iterations: int = 64
    max_loop_items: int = 10_000


@dataclass(frozen=True)
class ComponentInfo:
    """What validation needs to know about a referenced component."""

    name: str
    kind: str  # tool | agent | code | workflow
    input_schema: dict[str, Any] | None = None


ComponentLookup = Callable[[str], ComponentInfo | None]


@dataclass
class _Scope:
    """What expressions at one place may read."""

    nodes: frozenset[str]
    in_loop: bool


@dataclass
class _Validator:
    prefix: str
    lookup: ComponentLookup | None
    limits: Limits
    violations: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str, reason: str) -> None:
        full = f"{self.prefix}.{path}" if self.prefix and path else (self.prefix or path)
        self.violations.append(FieldViolation(full, description, reason))

    # -- expressions and templates -------------------------------------------------------------

    def expression(self, path: str, source: str, scope: _Scope, *, required: bool = True) -> None:
        if not source.strip():
            if required:
                self.add(path, "is required: write a CEL expression", "REQUIRED")
            return
        try:
            compiled = compile_expression(source)
        except ExpressionError as exc:
            self.add(path, f"CEL does not compile: {exc}", "CEL_COMPILE")
            return
        self._refs(path, compiled.node_refs, scope)
        if not scope.in_loop and ({"item", "index"} & compiled.variables):
            self.add(path, "`item` and `index` exist only inside a loop body", "LOOP_VARIABLE")

    def template(self, path: str, source: str, scope: _Scope) -> None:
        if not is_template(source):
            return
        try:
            compiled = compile_template(source)
        except TemplateError as exc:
            self.add(path, f"Jinja template does not parse: {exc}", "TEMPLATE_PARSE")
            return
        self._refs(path, compiled.node_refs, scope)
        allowed = {"inputs", "nodes"} | ({"item", "index"} if scope.in_loop else set())
        for name in sorted(compiled.variables - allowed - _JINJA_GLOBALS):
            self.add(path, f"the template uses undefined name {name!r}; templates see "
                           f"{', '.join(sorted(allowed))}", "TEMPLATE_UNDEFINED")

    def templates_in(self, path: str, value: Any, scope: _Scope) -> None:
        if isinstance(value, str):
            self.template(path, value, scope)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.templates_in(f"{path}.{key}", item, scope)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.templates_in(f"{path}[{index}]", item, scope)

    def _refs(self, path: str, refs: frozenset[str], scope: _Scope) -> None:
        for ref in sorted(refs - scope.nodes):
            visible = ", ".join(sorted(scope.nodes)) or "none"
            self.add(path, f"refers to node {ref!r}, which is not among the nodes this one "
                           f"depends on (directly or transitively); add it to depends_on or "
                           f"remove the reference (visible: {visible})", "NODE_OUT_OF_SCOPE")

    # -- nodes ---------------------------------------------------------------------------------

    def nodes(self, nodes: Sequence[blueprint_pb2.Node], path: str, outer: _Scope,
              depth: int) -> None:
        if depth > self.limits.max_depth:
            self.add(path, f"nesting is deeper than {self.limits.max_depth} levels",
                     "TOO_DEEP")
            return
        seen: dict[str, int] = {}
        for index, node in enumerate(nodes):
            node_path = f"{path}[{index}]"
            if not NODE_ID.match(node.id):
                self.add(f"{node_path}.id", f"{node.id!r} is not a valid node id: use letters, "
                                            "digits and '_', starting with a letter, at most 63",
                         "BAD_NODE_ID")
            elif node.id in seen:
                self.add(f"{node_path}.id", f"duplicate id {node.id!r} (also at index "
                                            f"{seen[node.id]}); ids must be unique among "
                                            "siblings", "DUPLICATE_ID")
            else:
                seen[node.id] = index
        ids = set(seen)
        for index, node in enumerate(nodes):
            for dep_index, dep in enumerate(node.depends_on):
                dep_path = f"{path}[{index}].depends_on[{dep_index}]"
                if dep == node.id:
                    self.add(dep_path, "a node cannot depend on itself", "SELF_DEPENDENCY")
                elif dep not in ids:
                    known = ", ".join(sorted(ids - {node.id})) or "none"
                    self.add(dep_path, f"unknown node {dep!r}; depends_on names sibling nodes "
                                       f"(known here: {known})", "UNKNOWN_DEPENDENCY")
            if len(set(node.depends_on)) != len(node.depends_on):
                self.add(f"{path}[{index}].depends_on", "lists a node more than once",
                         "DUPLICATE_DEPENDENCY")
        cycle = graph.find_cycle(nodes)
        if cycle:
            self.add(path, f"dependency cycle: {' -> '.join(cycle)}; remove one of these "
                           "dependencies", "CYCLE")
        closures = graph.closures(nodes)
        for index, node in enumerate(nodes):
            scope = _Scope(outer.nodes | closures.get(node.id, frozenset()), outer.in_loop)
            self.node(node, f"{path}[{index}]", scope, depth)

    def node(self, node: blueprint_pb2.Node, path: str, scope: _Scope, depth: int) -> None:
        kind = graph.kind_of(node)
        if not kind:
            self.add(path, "has no kind: set exactly one of " + ", ".join(graph.NODE_KINDS),
                     "NO_KIND")
            return
        self.retry(node.retry, f"{path}.retry")
        for key in ("timeout",):
            duration = getattr(node, key)
            if node.HasField(key) and (duration.seconds < 0 or duration.nanos < 0 or
                                       (duration.seconds == 0 and duration.nanos == 0)):
                self.add(f"{path}.{key}", "must be positive", "BAD_DURATION")
        getattr(self, f"node_{kind}")(getattr(node, kind), f"{path}.{kind}", scope, depth)

    def retry(self, retry: blueprint_pb2.RetryPolicy, path: str) -> None:
        if retry.max_attempts < 0 or retry.max_attempts > self.limits.max_retry_attempts:
            self.add(f"{path}.max_attempts",
                     f"must be between 0 and {self.limits.max_retry_attempts}", "OUT_OF_RANGE")
        if retry.multiplier and retry.multiplier < 1.0:
            self.add(f"{path}.multiplier", "must be at least 1.0", "OUT_OF_RANGE")
        if not 0.0 <= retry.jitter <= 1.0:
            self.add(f"{path}.jitter", "must be between 0 and 1", "OUT_OF_RANGE")
        for name in ("initial_backoff", "max_backoff"):
            value = getattr(retry, name)
            if value.seconds < 0 or value.nanos < 0:
                self.add(f"{path}.{name}", "must not be negative", "BAD_DURATION")

    def component(self, path: str, ref: str, kinds: tuple[str, ...]) -> None:
        if not ref.strip():
            self.add(path, "is required: a component id, its full name or builtins/<name>",
                     "REQUIRED")
            return
        if self.lookup is None:
            return
        info = self.lookup(ref)
        if info is None:
            self.add(path, f"component {ref!r} does not exist in this project",
                     "UNKNOWN_COMPONENT")
        elif info.kind not in kinds:
            self.add(path, f"component {ref!r} is a {info.kind}; this needs a "
                           f"{' or '.join(kinds)}", "WRONG_COMPONENT_KIND")

    def args(self, path: str, args: Any, expressions: Any, scope: _Scope) -> None:
        self.templates_in(f"{path}.args", json_format.MessageToDict(args), scope)
        for key, source in expressions.items():
            self.expression(f"{path}.arg_expressions.{key}", source, scope)

    def node_tool(self, tool: Any, path: str, scope: _Scope, depth: int) -> None:
        self.component(f"{path}.component", tool.component, ("tool",))
        if tool.version < 0:
            self.add(f"{path}.version", "must not be negative", "OUT_OF_RANGE")
        self.args(path, tool.args, tool.arg_expressions, scope)

    def node_llm(self, llm: Any, path: str, scope: _Scope, depth: int) -> None:
        if not llm.model.strip():
            self.add(f"{path}.model", "is required: `deterministic` or `{provider}/{model}`",
                     "REQUIRED")
        if not llm.prompt.strip():
            self.add(f"{path}.prompt", "is required", "REQUIRED")
        self.template(f"{path}.prompt", llm.prompt, scope)
        self.template(f"{path}.system", llm.system, scope)
        if llm.max_tokens < 0:
            self.add(f"{path}.max_tokens", "must not be negative", "OUT_OF_RANGE")

    def node_agent(self, agent: Any, path: str, scope: _Scope, depth: int) -> None:
        if agent.agent:
            self.component(f"{path}.agent", agent.agent, ("agent",))
        elif not agent.model.strip():
            self.add(f"{path}.model", "is required when no agent component is given",
                     "REQUIRED")
        if not agent.prompt.strip():
            self.add(f"{path}.prompt", "is required", "REQUIRED")
        self.template(f"{path}.prompt", agent.prompt, scope)
        self.template(f"{path}.system", agent.system, scope)
        for index, tool in enumerate(agent.tools):
            self.component(f"{path}.tools[{index}]", tool, ("tool",))
        if not 0 <= agent.max_iterations <= self.limits.max_agent_iterations:
            self.add(f"{path}.max_iterations",
                     f"must be between 0 and {self.limits.max_agent_iterations}",
                     "OUT_OF_RANGE")

    def node_condition(self, condition: Any, path: str, scope: _Scope, depth: int) -> None:
        self.expression(f"{path}.expression", condition.expression, scope)
        self.nodes(condition.then, f"{path}.then", scope, depth + 1)
        self.nodes(getattr(condition, "else"), f"{path}.else", scope, depth + 1)

    def node_loop(self, loop: Any, path: str, scope: _Scope, depth: int) -> None:
        self.expression(f"{path}.items", loop.items, scope)
        if not loop.body:
            self.add(f"{path}.body", "must have at least one node", "EMPTY")
        if loop.max_concurrency < 0:
            self.add(f"{path}.max_concurrency", "must not be negative", "OUT_OF_RANGE")
        if not 0 <= loop.max_items <= self.limits.max_loop_items:
            self.add(f"{path}.max_items", f"must be between 0 and {self.limits.max_loop_items}",
                     "OUT_OF_RANGE")
        body_scope = _Scope(scope.nodes, in_loop=True)
        self.nodes(loop.body, f"{path}.body", body_scope, depth + 1)
        if loop.collect:
            collect_scope = _Scope(scope.nodes | {n.id for n in loop.body}, in_loop=True)
            self.expression(f"{path}.collect", loop.collect, collect_scope)

    def node_parallel(self, parallel: Any, path: str, scope: _Scope, depth: int) -> None:
        if not parallel.branches:
            self.add(f"{path}.branches", "must have at least one branch", "EMPTY")
        names: set[str] = set()
        for index, branch in enumerate(parallel.branches):
            branch_path = f"{path}.branches[{index}]"
            if not NODE_ID.match(branch.name):
                self.add(f"{branch_path}.name", f"{branch.name!r} is not a valid branch name",
                         "BAD_NAME")
            elif branch.name in names:
                self.add(f"{branch_path}.name", f"duplicate branch name {branch.name!r}",
                         "DUPLICATE_ID")
            names.add(branch.name)
            if not branch.nodes:
                self.add(f"{branch_path}.nodes", "must have at least one node", "EMPTY")
            self.nodes(branch.nodes, f"{branch_path}.nodes", scope, depth + 1)

    def node_code(self, code: Any, path: str, scope: _Scope, depth: int) -> None:
        which = code.WhichOneof("source_kind")
        if which is None or (which == "source" and not code.source.strip()):
            self.add(f"{path}.source", "is required: Python source defining main(inputs), or "
                                       "a code component", "REQUIRED")
        elif which == "source":
            try:
                compile(code.source, "<code node>", "exec", dont_inherit=True)
            except SyntaxError as exc:
                self.add(f"{path}.source", f"Python syntax error on line {exc.lineno}: "
                                           f"{exc.msg}", "PYTHON_SYNTAX")
            except ValueError as exc:
                self.add(f"{path}.source", f"not valid Python source: {exc}", "PYTHON_SYNTAX")
        else:
            self.component(f"{path}.component", code.component, ("code",))
        self.args(path, code.args, code.arg_expressions, scope)

    def node_workflow(self, workflow: Any, path: str, scope: _Scope, depth: int) -> None:
        which = workflow.WhichOneof("target")
        if which is None:
            self.add(f"{path}.blueprint", "is required: a blueprint id or a workflow component",
                     "REQUIRED")
        elif which == "component":
            self.component(f"{path}.component", workflow.component, ("workflow",))
        elif not workflow.blueprint.strip():
            self.add(f"{path}.blueprint", "is required", "REQUIRED")
        if workflow.version < 0:
            self.add(f"{path}.version", "must not be negative", "OUT_OF_RANGE")
        self.args(path, workflow.args, workflow.arg_expressions, scope)

    def node_human(self, human: Any, path: str, scope: _Scope, depth: int) -> None:
        if not human.prompt.strip():
            self.add(f"{path}.prompt", "is required: what the person is asked", "REQUIRED")
        self.template(f"{path}.prompt", human.prompt, scope)
        if human.timeout_decision == blueprint_pb2.HUMAN_DECISION_INPUT and \
                not human.HasField("timeout_input"):
            self.add(f"{path}.timeout_input", "is required when timeout_decision is "
                                              "HUMAN_DECISION_INPUT", "REQUIRED")


def validate_blueprint(blueprint: blueprint_pb2.Blueprint, *, prefix: str = "",
                       lookup: ComponentLookup | None = None,
                       limits: Limits = Limits()) -> list[FieldViolation]:
    """Every violation in `blueprint`; field paths are prefixed with `prefix` (e.g.
    "blueprint" for a CreateBlueprint request)."""
    v = _Validator(prefix, lookup, limits)
    if not blueprint.nodes:
        v.add("nodes", "a blueprint needs at least one node", "EMPTY")
    count = sum(1 for _ in graph.walk(blueprint.nodes))
    if count > limits.max_nodes:
        v.add("nodes", f"has {count} nodes; the limit is {limits.max_nodes}", "TOO_MANY_NODES")
        return v.violations
    v.nodes(blueprint.nodes, "nodes", _Scope(frozenset(), in_loop=False), 1)
    if blueprint.output:
        v.expression("output", blueprint.output,
                     _Scope(frozenset(n.id for n in blueprint.nodes), in_loop=False))
    if blueprint.run_timeout.seconds < 0 or blueprint.run_timeout.nanos < 0:
        v.add("run_timeout", "must not be negative", "BAD_DURATION")
    return v.violations


def component_references(blueprint: blueprint_pb2.Blueprint) -> set[str]:
    """Every component reference in the blueprint, for the caller to load before validating."""
    refs: set[str] = set()
    for node, _, _ in graph.walk(blueprint.nodes):
        kind = graph.kind_of(node)
        if kind == "tool" and node.tool.component:
            refs.add(node.tool.component)
        elif kind == "agent":
            if node.agent.agent:
                refs.add(node.agent.agent)
            refs.update(node.agent.tools)
        elif kind == "code" and node.code.WhichOneof("source_kind") == "component":
            refs.add(node.code.component)
        elif kind == "workflow" and node.workflow.WhichOneof("target") == "component":
            refs.add(node.workflow.component)
    return refs
