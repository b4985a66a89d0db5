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

import heapq
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
    """A dependency cycle as [a, b, …, a], or None. Iterative, so a chain of any length (the
    limit is 1,000 nodes) cannot exhaust Python's recursion limit."""
    deps = dependency_map(nodes)
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    for root in deps:
        if root in state:
            continue
        path: list[str] = [root]
        state[root] = 1
        pending: list[list[str]] = [list(deps[root])]
        while path:
            if not pending[-1]:
                state[path.pop()] = 2
                pending.pop()
                continue
            dep = pending[-1].pop()
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state:
                state[dep] = 1
                path.append(dep)
                pending.append(list(deps[dep]))
    return None


def closures(nodes: Sequence[Node]) -> dict[str, frozenset[str]]:
    """id → every sibling it depends on, directly or transitively. Computed in topological
    order (iteratively); members of a cycle, which validation reports, get what is reachable
    without going round it."""
    deps = dependency_map(nodes)
    result: dict[str, frozenset[str]] = {}
    try:
        order = topological_order(nodes)
    except ValueError:
        order = []
    for node_id in order:
        acc: set[str] = set()
        for dep in deps[node_id]:
            acc.add(dep)
            acc |= result[dep]
        result[node_id] = frozenset(acc)
    for node_id in deps:  # cyclic leftovers: plain reachability, without recursion
        if node_id in result:
            continue
        seen: set[str] = set()
        stack = list(deps[node_id])
        while stack:
            dep = stack.pop()
            if dep in seen or dep == node_id:
                continue
            seen.add(dep)
            stack.extend(deps[dep])
        result[node_id] = frozenset(seen)
    return result


def topological_order(nodes: Sequence[Node]) -> list[str]:
    """Sibling ids in an order where every node comes after its dependencies; among nodes
    that are ready together, blueprint order is kept. Raises ValueError on a cycle."""
    deps = dependency_map(nodes)
    position = {n.id: i for i, n in enumerate(nodes)}
    waiting = {node_id: len(set(d)) for node_id, d in deps.items()}
    dependents: dict[str, list[str]] = {node_id: [] for node_id in deps}
    for node_id, ds in deps.items():
        for dep in set(ds):
            dependents[dep].append(node_id)
    ready = [node_id for node_id, count in waiting.items() if count == 0]
    heapq.heapify(ready_heap := [(position[i], i) for i in ready])
    order: list[str] = []
    while ready_heap:
        _, node_id = heapq.heappop(ready_heap)
        order.append(node_id)
        for dependent in dependents[node_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready_heap, (position[dependent], dependent))
    if len(order) != len(deps):
        raise ValueError(f"dependency cycle among {sorted(set(deps) - set(order))}")
    return order


def walk(nodes: Sequence[Node], field: str = "nodes",
         depth: int = 1) -> Iterator[tuple[Node, str, int]]:
    """Every node with its field path and nesting depth (1 for top level)."""
    for index, node in enumerate(nodes):
        path = f"{field}[{index}]"
        yield node, path, depth
        for nested in nested_lists(node):
            yield from walk(nested.nodes, f"{path}.{nested.field}", depth + 1)
