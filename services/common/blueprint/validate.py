"""Blueprint validation: every violation at once, each with a field path and a fix.

Used by the registry before saving and by the orchestrator at StartRun. Component references are
checked through a synchronous `lookup` the caller fills beforehand (collect the references with
`component_references`, load them, then validate), and workflow targets through a
`WorkflowIndex` the caller loads the same way (`workflow_targets` lists what to load), so this
module does no I/O.

It is linear in the size of the blueprint: dependency closures are bitsets computed in
topological order, simple templates (`text {{ a.b.c }} text`) are checked without compiling them,
and JSON Schema validators are built once per schema.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from google.protobuf import json_format
from jinja2.defaults import DEFAULT_FILTERS
from iceos.registry.v1 import blueprint_pb2

from services.common.errors import FieldViolation

from . import graph
from .expressions import ExpressionError, compile_expression
from .templates import (MAX_TEMPLATE_CHARS, TemplateError, compile_template, has_template,
                        is_template)

NODE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_ID_CHARS = 63
# Names a template may use besides the ones the blueprint provides (Jinja globals).
_JINJA_GLOBALS = frozenset({"range", "dict", "lipsum", "cycler", "joiner", "namespace", "loop"})


@dataclass(frozen=True)
class Limits:
    max_nodes: int = 1000
    max_depth: int = 16
    max_retry_attempts: int = 20
    max_agent_iterations: int = 64
    max_loop_items: int = 10_000
    # The serialized Blueprint message (what is stored as one version).
    max_spec_bytes: int = 4 * 1024 * 1024
    max_display_name_chars: int = 256
    max_description_chars: int = 16 * 1024
    max_depends_on: int = 1000
    # Violations reported before the rest is summarised (a pasted 1,000-node mistake should
    # not produce a 1 MB error).
    max_violations: int = 500


@dataclass(frozen=True)
class ComponentInfo:
    """What validation needs to know about a referenced component."""

    name: str
    kind: str  # tool | agent | code | workflow
    input_schema: dict[str, Any] | None = None
    # The newest version (0: unknown); a pinned version above it does not exist.
    latest_version: int = 0


ComponentLookup = Callable[[str], ComponentInfo | None]

# -- workflow targets ------------------------------------------------------------------------------

# ("blueprint" | "component", id, version); version 0 means "the latest when the run starts".
WorkflowKey = tuple[str, str, int]


@dataclass
class WorkflowIndex:
    """What the caller loaded about workflow targets, so validation can check that they exist
    and that no workflow reaches itself (a run would start itself forever).

    `edges` has an entry for every target that exists (loaded so far): the keys it points at.
    A blueprint points at the targets of its workflow nodes; a workflow component at its
    blueprint. `self_key` is what is being saved (its new content is the latest), or None.
    """

    project: str
    edges: dict[WorkflowKey, list[WorkflowKey]] = field(default_factory=dict)
    self_key: WorkflowKey | None = None
    # Keys that were not loaded because the search hit its bound; treated as existing.
    unexplored: set[WorkflowKey] = field(default_factory=set)

    def key(self, kind: str, ref: str, version: int = 0) -> WorkflowKey | None:
        """The key for a reference (an id, or a full name in this project); None if it names
        another project or is malformed."""
        ref = ref.strip()
        collection = "blueprints" if kind == "blueprint" else "components"
        if ref.startswith("projects/"):
            parts = ref.split("/")
            if len(parts) != 4 or parts[1] != self.project or parts[2] != collection:
                return None
            ref = parts[3]
        if not RESOURCE_ID.match(ref):
            return None
        return (kind, ref, max(version, 0))

    def exists(self, key: WorkflowKey) -> bool:
        return key == self.self_key or key in self.edges or key in self.unexplored

    def cycle_from(self, start: WorkflowKey) -> list[WorkflowKey] | None:
        """A path start → … → (self or a key already on the path), or None. Iterative DFS."""
        if self.self_key is not None and start == self.self_key:
            return [start]
        on_path: dict[WorkflowKey, int] = {}
        done: set[WorkflowKey] = set()
        path: list[WorkflowKey] = [start]
        iters: list[Iterator[WorkflowKey]] = [iter(self.edges.get(start, ()))]
        on_path[start] = 0
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                finished = path.pop()
                del on_path[finished]
                done.add(finished)
                iters.pop()
                continue
            if nxt == self.self_key or nxt in on_path:
                return [*path, nxt]
            if nxt in done:
                continue
            on_path[nxt] = len(path)
            path.append(nxt)
            iters.append(iter(self.edges.get(nxt, ())))
        return None


RESOURCE_ID = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def workflow_targets(blueprint: blueprint_pb2.Blueprint) -> list[tuple[str, str, int]]:
    """(kind, reference, version) of every workflow node's target, for the caller to load."""
    found = []
    for node, _, _ in graph.walk(blueprint.nodes):
        if graph.kind_of(node) == "workflow":
            target = node.workflow.WhichOneof("target")
            if target is not None:
                # `version` pins the blueprint; a workflow component pins its own.
                version = node.workflow.version if target == "blueprint" else 0
                found.append((target, getattr(node.workflow, target), version))
    return found


def _describe(key: WorkflowKey) -> str:
    kind, ident, version = key
    return f"{kind} {ident}" + (f" v{version}" if version else "")


# -- JSON Schemas ----------------------------------------------------------------------------------

_NO_VALIDATOR = object()
_schema_validators: dict[str, Any] = {}


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """(path inside the schema, problem) for a JSON Schema that its meta-schema rejects."""
    if not isinstance(schema, dict):
        return [("", "must be a JSON object (a JSON Schema)")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = jsonschema.validators.validator_for(schema, default=_NO_VALIDATOR)
    if cls is _NO_VALIDATOR:
        if "$schema" in schema:
            return [("$schema", f"unknown meta-schema {schema['$schema']!r}; use "
                                "https://json-schema.org/draft/2020-12/schema or omit it")]
        cls = jsonschema.Draft202012Validator
    problems = []
    seen = set()
    for error in cls(cls.META_SCHEMA).iter_errors(schema):
        where = _json_path(error.absolute_path)
        if where in seen:
            continue
        seen.add(where)
        problems.append((where, f"not a valid JSON Schema: {error.message}"))
        if len(problems) >= 10:
            break
    return problems


def _validator(schema: dict[str, Any]) -> Any:
    key = json.dumps(schema, sort_keys=True, default=str)
    validator = _schema_validators.get(key)
    if validator is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls = jsonschema.validators.validator_for(schema,
                                                      default=jsonschema.Draft202012Validator)
        validator = cls(schema)
        if len(_schema_validators) > 1024:
            _schema_validators.clear()
        _schema_validators[key] = validator
    return validator


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(path: str, sub: str) -> str:
    if not sub:
        return path
    return path + sub if sub.startswith("[") else f"{path}.{sub}"


# -- templates: a fast path for the common `text {{ name.attr | filter }} text` shape ------------------------

_TEXT = r"(?:[^{]|\{(?![{%#]))*"
_VAR = (r"\{\{-?\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
        r"((?:\s*\|\s*[A-Za-z_][A-Za-z0-9_]*)*)\s*-?\}\}")
_SIMPLE_TEMPLATE = re.compile(rf"{_TEXT}(?:{_VAR}{_TEXT})*\Z")
_SIMPLE_VAR = re.compile(_VAR)
_JINJA_WORDS = frozenset("and or not in is if else elif endif for endfor true false none True "
                         "False None recursive block extends include import from with set "
                         "macro call filter raw".split())


def _template_names(source: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(variables, node refs) of a simple template without compiling it; None if not simple."""
    if len(source) > MAX_TEMPLATE_CHARS or not _SIMPLE_TEMPLATE.match(source):
        return None
    variables, refs = set(), set()
    for match in _SIMPLE_VAR.finditer(source):
        parts = match.group(1).split(".")
        if parts[0] in _JINJA_WORDS:
            return None
        for name in match.group(2).replace("|", " ").split():
            if name not in DEFAULT_FILTERS:  # let Jinja report the unknown filter
                return None
        variables.add(parts[0])
        if parts[0] == "nodes" and len(parts) > 1:
            refs.add(parts[1])
    return frozenset(variables), frozenset(refs)


# -- scopes ----------------------------------------------------------------------------------------


class _Scope:
    """What expressions at one place may read: the node's dependency closure among its
    siblings (a bitset over the sibling list), plus whatever the enclosing container sees."""

    __slots__ = ("parent", "ids", "bits", "in_loop", "extra")

    def __init__(self, parent: "_Scope | None", ids: Mapping[str, int] | None, bits: int,
                 in_loop: bool, extra: frozenset[str] = frozenset()) -> None:
        self.parent = parent
        self.ids = ids
        self.bits = bits
        self.in_loop = in_loop
        self.extra = extra

    def sees(self, ref: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if ref in scope.extra:
                return True
            if scope.ids is not None:
                index = scope.ids.get(ref)
                if index is not None and (scope.bits >> index) & 1:
                    return True
            scope = scope.parent
        return False

    def visible(self) -> list[str]:
        names: set[str] = set()
        scope: _Scope | None = self
        while scope is not None:
            names |= scope.extra
            if scope.ids is not None:
                names.update(i for i, n in scope.ids.items() if (scope.bits >> n) & 1)
            scope = scope.parent
        return sorted(names)


def _closures(nodes: Sequence[blueprint_pb2.Node], ids: Mapping[str, int]
              ) -> tuple[list[int], list[int] | None]:
    """Per node, the bitset of siblings it depends on transitively; and a cycle as sibling
    indexes [a, b, …, a] (a depends on b), or None. Kahn's algorithm, no recursion."""
    count = len(nodes)
    deps = [[ids[d] for d in node.depends_on if d in ids and ids[d] != i]
            for i, node in enumerate(nodes)]
    waiting = [len(set(d)) for d in deps]
    dependents: list[list[int]] = [[] for _ in range(count)]
    for i, ds in enumerate(deps):
        for d in set(ds):
            dependents[d].append(i)
    bits = [0] * count
    ready = [i for i in range(count) if waiting[i] == 0]
    done = [False] * count
    while ready:
        i = ready.pop()
        done[i] = True
        closure = 0
        for d in deps[i]:
            closure |= (1 << d) | bits[d]
        bits[i] = closure
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
    if all(done):
        return bits, None
    for i in range(count):  # nodes on or behind a cycle: direct dependencies at least
        if not done[i]:
            for d in deps[i]:
                bits[i] |= (1 << d) | bits[d]
    start = next(i for i in range(count) if not done[i])
    order: dict[int, int] = {}
    walk = []
    current = start
    while current not in order:
        order[current] = len(walk)
        walk.append(current)
        current = next(d for d in deps[current] if not done[d])
    cycle = walk[order[current]:] + [current]
    return bits, cycle


# -- the validator ---------------------------------------------------------------------------------


@dataclass
class _Validator:
    prefix: str
    lookup: ComponentLookup | None
    limits: Limits
    workflows: WorkflowIndex | None = None
    violations: list[FieldViolation] = field(default_factory=list)
    dropped: int = 0

    def add(self, path: str, description: str, reason: str) -> None:
        if len(self.violations) >= self.limits.max_violations:
            self.dropped += 1
            return
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
        names = _template_names(source)
        if names is None:
            try:
                compiled = compile_template(source)
            except TemplateError as exc:
                self.add(path, f"Jinja template does not parse: {exc}", "TEMPLATE_PARSE")
                return
            names = (compiled.variables, compiled.node_refs)
        variables, refs = names
        self._refs(path, refs, scope)
        allowed = {"inputs", "nodes"} | ({"item", "index"} if scope.in_loop else set())
        for name in sorted(variables - allowed - _JINJA_GLOBALS):
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
        for ref in sorted(refs):
            if scope.sees(ref):
                continue
            visible = ", ".join(scope.visible()) or "none"
            self.add(path, f"refers to node {ref!r}, which is not among the nodes this one "
                           f"depends on (directly or transitively); add it to depends_on or "
                           f"remove the reference (visible: {visible})", "NODE_OUT_OF_SCOPE")

    def schema(self, path: str, value: Any) -> None:
        """A JSON Schema field: reported where the meta-schema rejects it."""
        for where, problem in schema_problems(value):
            self.add(_join(path, where), problem, "BAD_SCHEMA")

    # -- nodes ---------------------------------------------------------------------------------

    def node_id(self, path: str, node_id: str) -> bool:
        if NODE_ID.match(node_id):
            return True
        if not node_id:
            problem = "is required"
        elif len(node_id) > MAX_ID_CHARS:
            problem = f"is {len(node_id)} characters; the limit is {MAX_ID_CHARS}"
        elif not node_id[0].isascii() or not node_id[0].isalpha():
            problem = f"{node_id!r} must start with a letter"
        else:
            bad = next(c for c in node_id if not (c.isascii() and (c.isalnum() or c == "_")))
            problem = f"{node_id!r} contains {bad!r}, which is reserved"
        self.add(path, f"{problem}: node ids use letters, digits and '_', start with a letter "
                       f"and have at most {MAX_ID_CHARS} characters", "BAD_NODE_ID")
        return False

    def nodes(self, nodes: Sequence[blueprint_pb2.Node], path: str, outer: _Scope,
              depth: int) -> None:
        if depth > self.limits.max_depth:
            self.add(path, f"nesting is deeper than {self.limits.max_depth} levels; move the "
                           "inner part into its own blueprint and call it with a workflow node",
                     "TOO_DEEP")
            return
        ids: dict[str, int] = {}
        for index, node in enumerate(nodes):
            node_path = f"{path}[{index}]"
            if not self.node_id(f"{node_path}.id", node.id):
                continue
            if node.id in ids:
                self.add(f"{node_path}.id", f"duplicate id {node.id!r} (also at index "
                                            f"{ids[node.id]}); ids must be unique among "
                                            "siblings", "DUPLICATE_ID")
            else:
                ids[node.id] = index
        for index, node in enumerate(nodes):
            if len(node.depends_on) > self.limits.max_depends_on:
                self.add(f"{path}[{index}].depends_on",
                         f"lists more than {self.limits.max_depends_on} nodes", "TOO_MANY")
                continue
            seen: set[str] = set()
            for dep_index, dep in enumerate(node.depends_on):
                dep_path = f"{path}[{index}].depends_on[{dep_index}]"
                if dep == node.id:
                    self.add(dep_path, "a node cannot depend on itself", "SELF_DEPENDENCY")
                elif dep not in ids:
                    known = ", ".join(sorted(set(ids) - {node.id})) or "none"
                    self.add(dep_path, f"unknown node {dep!r}; depends_on names sibling nodes "
                                       f"(known here: {known})", "UNKNOWN_DEPENDENCY")
                elif dep in seen:
                    self.add(dep_path, f"lists {dep!r} more than once", "DUPLICATE_DEPENDENCY")
                seen.add(dep)
        bits, cycle = _closures(nodes, ids)
        if cycle:
            first, second = cycle[0], cycle[1]
            dep_index = list(nodes[first].depends_on).index(nodes[second].id)
            names = " -> ".join(nodes[i].id for i in cycle)
            self.add(f"{path}[{first}].depends_on[{dep_index}]",
                     f"dependency cycle: {names} (each depends on the next); remove one of "
                     "these dependencies", "CYCLE")
        for index, node in enumerate(nodes):
            scope = _Scope(outer, ids, bits[index], outer.in_loop)
            self.node(node, f"{path}[{index}]", scope, depth)

    def node(self, node: blueprint_pb2.Node, path: str, scope: _Scope, depth: int) -> None:
        kind = graph.kind_of(node)
        if not kind:
            self.add(path, "has no kind: set exactly one of " + ", ".join(graph.NODE_KINDS),
                     "NO_KIND")
            return
        self.retry(node.retry, f"{path}.retry")
        if node.HasField("timeout"):
            duration = node.timeout
            if duration.seconds < 0 or duration.nanos < 0 or \
                    (duration.seconds == 0 and duration.nanos == 0):
                self.add(f"{path}.timeout", "must be positive", "BAD_DURATION")
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

    def component(self, path: str, ref: str, kinds: tuple[str, ...],
                  version: int = 0) -> ComponentInfo | None:
        if not ref.strip():
            self.add(path, "is required: a component id, its full name or builtins/<name>",
                     "REQUIRED")
            return None
        if self.lookup is None:
            return None
        info = self.lookup(ref)
        if info is None:
            self.add(path, f"component {ref!r} does not exist in this project (use its id, "
                           "its full name projects/<project>/components/<id>, or "
                           "builtins/<name> for a built-in)", "UNKNOWN_COMPONENT")
            return None
        if info.kind not in kinds:
            self.add(path, f"component {ref!r} is a {info.kind}; this needs a "
                           f"{' or '.join(kinds)}", "WRONG_COMPONENT_KIND")
            return None
        if version and info.latest_version and version > info.latest_version:
            self.add(path.rsplit(".", 1)[0] + ".version",
                     f"component {ref!r} has no version {version} (the latest is "
                     f"{info.latest_version})", "UNKNOWN_VERSION")
        return info

    def args(self, path: str, args: Any, expressions: Any, scope: _Scope,
             schema: dict[str, Any] | None = None) -> None:
        values = json_format.MessageToDict(args) if args.fields else {}
        self.templates_in(f"{path}.args", values, scope)
        for key, source in expressions.items():
            self.expression(f"{path}.arg_expressions.{key}", source, scope)
        if schema:
            self.args_against_schema(path, values, set(expressions), schema)

    def args_against_schema(self, path: str, values: dict[str, Any], computed: set[str],
                            schema: dict[str, Any]) -> None:
        """Arguments that contradict the component's input schema where that is known before
        the run: literal values (no template inside) and required names nobody supplies."""
        dynamic = computed | {k for k, v in values.items() if has_template(v)}
        literal = {k: v for k, v in values.items() if k not in dynamic}
        try:
            validator = _validator(schema)
            errors = list(validator.iter_errors(literal))
        except Exception:  # a schema jsonschema cannot use: checked when the component is saved
            return
        args_path = f"{path}.args"
        for error in errors:
            where = list(error.absolute_path)
            if not where:
                if error.validator == "required":
                    for name in error.validator_value:
                        if name not in literal and name not in dynamic:
                            self.add(args_path, f"the component needs argument {name!r}; set "
                                                f"it in args or arg_expressions",
                                     "MISSING_ARGUMENT")
                elif error.validator == "additionalProperties":
                    known = sorted((schema.get("properties") or {}).keys())
                    for name in sorted(literal):
                        if name not in known:
                            self.add(f"{args_path}.{name}", f"the component takes no argument "
                                     f"{name!r} (it takes: {', '.join(known) or 'none'})",
                                     "UNKNOWN_ARGUMENT")
                elif not dynamic:
                    self.add(args_path, f"does not match the component's input schema: "
                                        f"{error.message}", "ARGUMENT_SCHEMA")
                continue
            self.add(_join(args_path, _json_path(where)),
                     f"does not match the component's input schema: {error.message}",
                     "ARGUMENT_SCHEMA")
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) \
            else {}
        if schema.get("additionalProperties") is False and not schema.get("patternProperties"):
            for name in sorted(computed):
                if name not in properties:
                    self.add(f"{path}.arg_expressions.{name}", f"the component takes no "
                             f"argument {name!r} (it takes: {', '.join(sorted(properties)) or 'none'})",
                             "UNKNOWN_ARGUMENT")

    def node_tool(self, tool: Any, path: str, scope: _Scope, depth: int) -> None:
        info = self.component(f"{path}.component", tool.component, ("tool",), tool.version)
        if tool.version < 0:
            self.add(f"{path}.version", "must not be negative", "OUT_OF_RANGE")
        self.args(path, tool.args, tool.arg_expressions, scope,
                  info.input_schema if info is not None else None)

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
        if not 0.0 <= llm.temperature <= 2.0:
            self.add(f"{path}.temperature", "must be between 0 and 2", "OUT_OF_RANGE")
        if llm.HasField("response_schema"):
            self.schema(f"{path}.response_schema",
                        json_format.MessageToDict(llm.response_schema))

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
        otherwise = getattr(condition, "else")
        if not condition.then and not otherwise:
            self.add(f"{path}.then", "a condition needs nodes in then, else or both", "EMPTY")
        self.nodes(condition.then, f"{path}.then", scope, depth + 1)
        self.nodes(otherwise, f"{path}.else", scope, depth + 1)

    def node_loop(self, loop: Any, path: str, scope: _Scope, depth: int) -> None:
        self.expression(f"{path}.items", loop.items, scope)
        if not loop.body:
            self.add(f"{path}.body", "must have at least one node", "EMPTY")
        if loop.max_concurrency < 0:
            self.add(f"{path}.max_concurrency", "must not be negative", "OUT_OF_RANGE")
        if not 0 <= loop.max_items <= self.limits.max_loop_items:
            self.add(f"{path}.max_items", f"must be between 0 and {self.limits.max_loop_items}",
                     "OUT_OF_RANGE")
        body_scope = _Scope(scope, None, 0, in_loop=True)
        self.nodes(loop.body, f"{path}.body", body_scope, depth + 1)
        if loop.collect:
            collect_scope = _Scope(scope, None, 0, in_loop=True,
                                   extra=frozenset(n.id for n in loop.body))
            self.expression(f"{path}.collect", loop.collect, collect_scope)

    def node_parallel(self, parallel: Any, path: str, scope: _Scope, depth: int) -> None:
        if not parallel.branches:
            self.add(f"{path}.branches", "must have at least one branch", "EMPTY")
        names: set[str] = set()
        for index, branch in enumerate(parallel.branches):
            branch_path = f"{path}.branches[{index}]"
            if not NODE_ID.match(branch.name):
                self.add(f"{branch_path}.name", f"{branch.name!r} is not a valid branch name: "
                                                "use letters, digits and '_', starting with a "
                                                "letter", "BAD_NAME")
            elif branch.name in names:
                self.add(f"{branch_path}.name", f"duplicate branch name {branch.name!r}",
                         "DUPLICATE_ID")
            names.add(branch.name)
            if not branch.nodes:
                self.add(f"{branch_path}.nodes", "must have at least one node", "EMPTY")
            self.nodes(branch.nodes, f"{branch_path}.nodes", scope, depth + 1)

    def node_code(self, code: Any, path: str, scope: _Scope, depth: int) -> None:
        which = code.WhichOneof("source_kind")
        info = None
        if which is None or (which == "source" and not code.source.strip()):
            self.add(f"{path}.source", "is required: Python source defining main(inputs), or "
                                       "a code component", "REQUIRED")
        elif which == "source":
            for problem in python_problems(code.source):
                self.add(f"{path}.source", problem, "PYTHON_SYNTAX")
        else:
            info = self.component(f"{path}.component", code.component, ("code",))
        self.args(path, code.args, code.arg_expressions, scope,
                  info.input_schema if info is not None else None)

    def node_workflow(self, workflow: Any, path: str, scope: _Scope, depth: int) -> None:
        which = workflow.WhichOneof("target")
        if which is None:
            self.add(f"{path}.blueprint", "is required: a blueprint id or a workflow component",
                     "REQUIRED")
        elif which == "component":
            if self.component(f"{path}.component", workflow.component, ("workflow",)):
                self.workflow_target(f"{path}.component", "component", workflow.component, 0)
        elif not workflow.blueprint.strip():
            self.add(f"{path}.blueprint", "is required", "REQUIRED")
        else:
            self.workflow_target(f"{path}.blueprint", "blueprint", workflow.blueprint,
                                 workflow.version)
        if workflow.version < 0:
            self.add(f"{path}.version", "must not be negative", "OUT_OF_RANGE")
        self.args(path, workflow.args, workflow.arg_expressions, scope)

    def workflow_target(self, path: str, kind: str, ref: str, version: int) -> None:
        index = self.workflows
        if index is None:
            return
        key = index.key(kind, ref, version)
        if key is None or not index.exists(key):
            what = "blueprint" if kind == "blueprint" else "workflow component"
            pinned = f" version {version}" if version and key is not None and \
                index.exists((key[0], key[1], 0)) else ""
            self.add(path, f"{what} {ref!r}{pinned} does not exist in this project",
                     "UNKNOWN_BLUEPRINT" if kind == "blueprint" else "UNKNOWN_COMPONENT")
            return
        cycle = index.cycle_from(key)
        if cycle:
            names = " -> ".join(_describe(k) for k in cycle)
            start = _describe(index.self_key) + " -> " if index.self_key else ""
            self.add(path, f"workflow cycle: {start}{names}; a run would start itself without "
                           "end. Point this node at a workflow that does not lead back here",
                     "WORKFLOW_CYCLE")

    def node_human(self, human: Any, path: str, scope: _Scope, depth: int) -> None:
        if not human.prompt.strip():
            self.add(f"{path}.prompt", "is required: what the person is asked", "REQUIRED")
        self.template(f"{path}.prompt", human.prompt, scope)
        if human.HasField("input_schema"):
            self.schema(f"{path}.input_schema", json_format.MessageToDict(human.input_schema))
        if human.timeout_decision == blueprint_pb2.HUMAN_DECISION_INPUT and \
                not human.HasField("timeout_input"):
            self.add(f"{path}.timeout_input", "is required when timeout_decision is "
                                              "HUMAN_DECISION_INPUT", "REQUIRED")


def python_problems(source: str) -> list[str]:
    """Why Python source cannot run as `main(inputs)` (syntax, or no top-level main)."""
    try:
        tree = ast.parse(source, "<code>")
    except SyntaxError as exc:
        return [f"Python syntax error on line {exc.lineno}: {exc.msg}"]
    except ValueError as exc:
        return [f"not valid Python source: {exc}"]
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                statement.name == "main":
            if not statement.args.args and not statement.args.vararg:
                return ["main must take one argument: def main(inputs)"]
            return []
    return ["defines no top-level function main(inputs); the sandbox calls main(inputs)"]


def validate_blueprint(blueprint: blueprint_pb2.Blueprint, *, prefix: str = "",
                       lookup: ComponentLookup | None = None,
                       limits: Limits = Limits(),
                       workflows: WorkflowIndex | None = None) -> list[FieldViolation]:
    """Every violation in `blueprint`; field paths are prefixed with `prefix` (e.g.
    "blueprint" for a CreateBlueprint request). Without `lookup` components are not resolved;
    without `workflows` workflow targets are not checked."""
    v = _Validator(prefix, lookup, limits, workflows)
    size = blueprint.ByteSize()
    if size > limits.max_spec_bytes:
        v.add("", f"the blueprint is {size} bytes serialized; the limit is "
                  f"{limits.max_spec_bytes}", "TOO_LARGE")
        return v.violations
    if not blueprint.nodes:
        v.add("nodes", "a blueprint needs at least one node", "EMPTY")
    count = 0
    for _node, _path, depth in graph.walk(blueprint.nodes):
        count += 1
        if depth > limits.max_depth + 1:
            break  # reported by the nesting check; do not walk a pathological tree
    if count > limits.max_nodes:
        v.add("nodes", f"has {count} nodes; the limit is {limits.max_nodes}", "TOO_MANY_NODES")
        return v.violations
    if len(blueprint.display_name) > limits.max_display_name_chars:
        v.add("display_name", f"is longer than {limits.max_display_name_chars} characters",
              "TOO_LONG")
    if len(blueprint.description) > limits.max_description_chars:
        v.add("description", f"is longer than {limits.max_description_chars} characters",
              "TOO_LONG")
    if blueprint.HasField("input_schema"):
        v.schema("input_schema", json_format.MessageToDict(blueprint.input_schema))
    root = _Scope(None, None, 0, in_loop=False)
    v.nodes(blueprint.nodes, "nodes", root, 1)
    if blueprint.output:
        v.expression("output", blueprint.output,
                     _Scope(None, None, 0, in_loop=False,
                            extra=frozenset(n.id for n in blueprint.nodes)))
    if blueprint.run_timeout.seconds < 0 or blueprint.run_timeout.nanos < 0:
        v.add("run_timeout", "must not be negative", "BAD_DURATION")
    if v.dropped:
        v.violations.append(FieldViolation(
            prefix, f"{v.dropped} more violations not shown; fix these first", "TRUNCATED"))
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
