"""Loading what a blueprint or component refers to, so validation (which does no I/O) can
check it: the referenced components (a project's, or built-ins) and the graph of workflow
targets reachable from it (blueprints' latest or pinned versions, workflow components)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from google.protobuf import json_format
from iceos.registry.v1 import blueprint_pb2, component_pb2

from services.common import builtins
from services.common.blueprint import validate
from services.common.blueprint.validate import ComponentInfo, WorkflowIndex, WorkflowKey

from . import store

# How many blueprints and components one validation may load while following workflows.
MAX_WORKFLOW_LOADS = 256


def builtin_info(ref: str) -> ComponentInfo | None:
    tool = builtins.get(ref) if ref.startswith("builtins/") else None
    if tool is None:
        return None
    return ComponentInfo(tool.resource_name, "tool", tool.input_schema, 1)


def local_id(project_id: str, ref: str, collection: str = "components") -> str | None:
    """The id a reference names in this project (an id or a full name), or None."""
    ref = ref.strip()
    if ref.startswith("projects/"):
        parts = ref.split("/")
        if len(parts) != 4 or parts[1] != project_id or parts[2] != collection:
            return None
        ref = parts[3]
    return ref if validate.RESOURCE_ID.match(ref) else None


def _input_schema(message: bytes, kind: str) -> dict[str, Any] | None:
    if kind not in ("tool", "code"):
        return None
    spec = getattr(component_pb2.Component.FromString(message), kind)
    return json_format.MessageToDict(spec.input_schema) if spec.HasField("input_schema") \
        else None


async def component_lookup(conn: psycopg.AsyncConnection, project_id: str,
                           refs: Iterable[str]) -> validate.ComponentLookup:
    """A synchronous lookup over the referenced components, loaded in one query."""
    refs = set(refs)
    ids = {ref: local_id(project_id, ref) for ref in refs if not ref.startswith("builtins/")}
    rows = await store.get_many_latest(conn, store.COMPONENTS, project_id,
                                       sorted({i for i in ids.values() if i}))
    by_id = {row["id"]: ComponentInfo(
        f"projects/{project_id}/components/{row['id']}", row["kind"],
        _input_schema(row["message"], row["kind"]), int(row["latest_version"])) for row in rows}

    def lookup(ref: str) -> ComponentInfo | None:
        if ref.startswith("builtins/"):
            return builtin_info(ref)
        ident = ids.get(ref) if ref in ids else local_id(project_id, ref)
        return by_id.get(ident) if ident else None

    return lookup


def _blueprint_edges(index: WorkflowIndex, message: bytes) -> list[WorkflowKey]:
    edges = []
    for kind, ref, version in validate.workflow_targets(
            blueprint_pb2.Blueprint.FromString(message)):
        key = index.key(kind, ref, version)
        if key is not None:
            edges.append(key)
    return edges


def _component_edges(index: WorkflowIndex, kind: str, message: bytes) -> list[WorkflowKey]:
    if kind != "workflow":
        return []
    body = component_pb2.Component.FromString(message).workflow
    key = index.key("blueprint", body.blueprint, max(body.version, 0))
    return [key] if key is not None else []


async def workflow_index(conn: psycopg.AsyncConnection, project_id: str,
                         roots: Iterable[tuple[str, str, int]],
                         self_key: WorkflowKey | None) -> WorkflowIndex:
    """Load every workflow target reachable from `roots` [(kind, ref, version)], breadth
    first, a level per round trip, at most MAX_WORKFLOW_LOADS of them."""
    index = WorkflowIndex(project=project_id, self_key=self_key)
    frontier = {key for kind, ref, version in roots
                if (key := index.key(kind, ref, version)) is not None}
    loaded = 0
    while frontier:
        frontier = {k for k in frontier if k != self_key and k not in index.edges}
        if not frontier:
            break
        if loaded + len(frontier) > MAX_WORKFLOW_LOADS:
            index.unexplored |= frontier
            break
        loaded += len(frontier)
        latest_bp = sorted(k[1] for k in frontier if k[0] == "blueprint" and not k[2])
        pinned_bp = sorted((k[1], k[2]) for k in frontier if k[0] == "blueprint" and k[2])
        comps = sorted(k[1] for k in frontier if k[0] == "component")
        found: dict[WorkflowKey, list[WorkflowKey]] = {}
        for row in await store.get_many_latest(conn, store.BLUEPRINTS, project_id, latest_bp):
            found[("blueprint", row["id"], 0)] = _blueprint_edges(index, row["message"])
        for row in await store.get_versions(conn, store.BLUEPRINTS, project_id, pinned_bp):
            found[("blueprint", row["id"], int(row["version"]))] = \
                _blueprint_edges(index, row["message"])
        for row in await store.get_many_latest(conn, store.COMPONENTS, project_id, comps):
            found[("component", row["id"], 0)] = \
                _component_edges(index, row["kind"], row["message"])
        index.edges.update(found)
        frontier = {edge for edges in found.values() for edge in edges}
    return index


async def validate_blueprint(conn: psycopg.AsyncConnection, project_id: str,
                             blueprint: blueprint_pb2.Blueprint, *, prefix: str,
                             self_id: str | None) -> list[validate.FieldViolation]:
    """Every violation of a blueprint in a project: structure, components, workflows."""
    lookup = await component_lookup(conn, project_id,
                                    validate.component_references(blueprint))
    self_key: WorkflowKey | None = ("blueprint", self_id, 0) if self_id else None
    roots = list(validate.workflow_targets(blueprint))
    # Workflow components are components too: follow them from their component key.
    index = await workflow_index(conn, project_id, roots, self_key)
    return validate.validate_blueprint(blueprint, prefix=prefix, lookup=lookup,
                                       workflows=index)
