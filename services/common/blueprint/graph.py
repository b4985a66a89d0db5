"""The shape rules of a blueprint, shared by validation and execution.

Scopes. Node ids are unique among siblings (one list of nodes). `depends_on` names siblings.
A node may read `nodes.<id>` for every sibling in its transitive dependency closure, plus
everything its enclosing container node may read (inner ids shadow outer ones). Nested lists:
a condition's `then` / `else`, a loop's `body` (which also sees `item` and `index`), and each
parallel branch's `nodes`.

Outputs of container nodes:
  condition → {"branch": "then" | "else", "outputs": {id: output, …}}
  loop      → [collect result per item, in item order]; default collect is {id: output, …}
  parallel  → JOIN_MODE_ALL: {branch name: {id: output, …}, …};
              ANY / FIRST_SUCCESS: {"branch": name, "outputs": {id: output, …}}

Paths name node executions in a run: `greet`, `check.then.notify`, `each[2].fetch`,
`fan.branches.a.call` (see run_path). Field paths name places in the blueprint for errors:
`nodes[3].loop.body[0].depends_on[1]` (see NestedList.field).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from iceos.registry.v1 import blueprint_pb2

Node = blueprint_pb2.Node

NODE_KINDS = ("tool", "llm", "agent", "condition", "loop", "parallel", "code", "workflow",
              "human")


def kind_of(node: Node) -> str:
    return node.WhichOneof("kind") or ""


@dataclass(frozen=True)
class NestedList:
    """One nested list of nodes inside a container node."""

    # Field path of the list relative to the container node, e.g. `loop.body`.
    field: str
    # Path segment inserted into run paths: `then`, `else`, `branches.<name>`; "" for a loop
    # body (whose run paths use `[index]` instead).
    segment: str
    nodes: Sequence[Node]
    is_loop_body: bool = False


def nested_lists(node: Node) -> list[NestedList]:
    kind = kind_of(node)
    if kind == "condition":
        return [NestedList("condition.then", "then", node.condition.then),
                NestedList("condition.else", "else", getattr(node.condition, "else"))]
    if kind == "loop":
        return [NestedList("loop.body", "", node.loop.body, is_loop_body=True)]
    if kind == "parallel":
        return [NestedList(f"parallel.branches[{i}].nodes", f"branches.{branch.name}",
                           branch.nodes) for i, branch in enumerate(node.parallel.branches)]
    return []


def run_path(parent: str, segment: str, node_id: str) -> str:
    """`parent.segment.node_id` with empty parts left out; loop bodies pass `each[2]` as
    parent and "" as segment."""
    return ".".join(part for part in (parent, segment, node_id) if part)


def dependency_map(nodes: Sequence[Node]) -> dict[str, list[str]]:
    """id → ids it depends on, among the known siblings (unknown ids are dropped)."""
    ids = {n.id for n in nodes}
    return {n.id: [d for d in n.depends_on if d in ids] for n in nodes}


def find_cycle(nodes: Sequence[Node]) -> list[str] | None:
    """A dependency cycle as [a, b, …, a], or None."""
    deps = dependency_map(nodes)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        stack.append(node_id)
        for dep in deps.get(node_id, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node_id] = 2
        return None

    for node in nodes:
        if node.id not in state:
            found = visit(node.id)
            if found:
                return found
    return None


def closures(nodes: Sequence[Node]) -> dict[str, frozenset[str]]:
    """id → every sibling it depends on, directly or transitively (assumes no cycle)."""
    deps = dependency_map(nodes)
    memo: dict[str, frozenset[str]] = {}

    def closure(node_id: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        if node_id in memo:
            return memo[node_id]
        result: set[str] = set()
        for dep in deps.get(node_id, []):
            if dep in seen:  # a cycle; validation reports it separately
                continue
            result.add(dep)
            result |= closure(dep, seen | {node_id})
        memo[node_id] = frozenset(result)
        return memo[node_id]

    return {n.id: closure(n.id) for n in nodes}


def topological_order(nodes: Sequence[Node]) -> list[str]:
    """Sibling ids in an order where every node comes after its dependencies (stable)."""
    deps = dependency_map(nodes)
    order: list[str] = []
    placed: set[str] = set()
    remaining = [n.id for n in nodes]
    while remaining:
        ready = [i for i in remaining if all(d in placed for d in deps[i])]
        if not ready:
            raise ValueError(f"dependency cycle among {remaining}")
        for node_id in ready:
            order.append(node_id)
            placed.add(node_id)
        remaining = [i for i in remaining if i not in placed]
    return order


def walk(nodes: Sequence[Node], field: str = "nodes",
         depth: int = 1) -> Iterator[tuple[Node, str, int]]:
    """Every node with its field path and nesting depth (1 for top level)."""
    for index, node in enumerate(nodes):
        path = f"{field}[{index}]"
        yield node, path, depth
        for nested in nested_lists(node):
            yield from walk(nested.nodes, f"{path}.{nested.field}", depth + 1)
