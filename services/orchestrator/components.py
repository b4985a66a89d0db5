"""Component and blueprint references as a run sees them: built-ins, registry components, pinned
versions.

References take three forms (blueprint.proto): `word_count` (an id in the run's project),
`projects/{project}/components/word_count` (the full name; another project's is unknown) and
`builtins/template`. StartRun resolves every registry reference to a version once and stores
the pins with the run, so a run executes the versions it started with even if the registry moves
on. Versions are immutable, so they are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from iceos.registry.v1 import blueprint_pb2

from services.common import builtins
from services.common.blueprint import graph
from services.common.blueprint.validate import ComponentInfo
from services.registry import store as registry_store


@dataclass(frozen=True)
class Component:
    ref: str
    kind: str  # tool | agent | code | workflow
    version: int  # 0 for a built-in
    spec: dict[str, Any]  # the Component message as protobuf JSON ({} for a built-in)
    builtin: builtins.BuiltinTool | None = None

    def field(self, message: str, name: str) -> Any:
        """A field of the spec's `message` (tool, agent, …), under its JSON or proto name."""
        part = self.spec.get(message) or {}
        camel = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
        return part.get(camel, part.get(name))

    @property
    def input_schema(self) -> dict[str, Any] | None:
        if self.builtin is not None:
            return self.builtin.input_schema
        return self.field(self.kind, "input_schema")

    def info(self) -> ComponentInfo:
        return ComponentInfo(name=self.ref, kind=self.kind, input_schema=self.input_schema)


def component_id(ref: str, project_id: str) -> str | None:
    """The registry id a reference names in this project, or None (another project's name, or a
    malformed one)."""
    if ref.startswith("projects/"):
        parts = ref.split("/")
        if len(parts) != 4 or parts[2] != "components" or parts[1] != project_id:
            return None
        return parts[3]
    return ref if ref and "/" not in ref else None


def blueprint_id(ref: str, project_id: str) -> str | None:
    if ref.startswith("projects/"):
        parts = ref.split("/")
        if len(parts) != 4 or parts[2] != "blueprints" or parts[1] != project_id:
            return None
        return parts[3]
    return ref if ref and "/" not in ref else None


def blueprint_pin_key(blueprint: str) -> str:
    return f"blueprint:{blueprint}"


class Catalog:
    """Reads components and blueprint versions, caching immutable versions."""

    def __init__(self) -> None:
        self._components: dict[tuple[str, str, int], Component] = {}
        self._blueprints: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._builtins: dict[str, Component] = {}

    async def component(self, conn: psycopg.AsyncConnection, project_id: str, ref: str,
                        version: int = 0) -> Component | None:
        if ref.startswith("builtins/"):
            found = self._builtins.get(ref)
            if found is None:
                tool = builtins.get(ref)
                if tool is None:
                    return None
                found = self._builtins[ref] = Component(ref, "tool", 0, {}, tool)
            return found
        cid = component_id(ref, project_id)
        if cid is None:
            return None
        if version:
            cached = self._components.get((project_id, cid, version))
            if cached is not None:
                return cached
        row = await registry_store.get_component_version(conn, project_id, cid, version or None)
        if row is None:
            return None
        found = Component(ref, row["kind"], int(row["version"]), row["spec"] or {})
        self._components[(project_id, cid, found.version)] = found
        return found

    async def blueprint(self, conn: psycopg.AsyncConnection, project_id: str, bid: str,
                        version: int = 0) -> dict[str, Any] | None:
        """{version, spec} of a blueprint version (latest when 0), or None."""
        if version:
            cached = self._blueprints.get((project_id, bid, version))
            if cached is not None:
                return cached
        row = await registry_store.get_blueprint_version(conn, project_id, bid, version or None)
        if row is None:
            return None
        found = {"version": int(row["version"]), "spec": row["spec"]}
        self._blueprints[(project_id, bid, found["version"])] = found
        return found

    async def resolve(self, conn: psycopg.AsyncConnection, project_id: str,
                      blueprint: blueprint_pb2.Blueprint, pins: dict[str, int] | None = None
                      ) -> tuple[dict[str, ComponentInfo], dict[str, int], list[str]]:
        """Load every component a blueprint references: (lookup for validation, pins, pinned
        versions that do not exist as `ref@version`)."""
        found: dict[str, ComponentInfo] = {}
        missing: list[str] = []
        new_pins: dict[str, int] = {}
        wanted: dict[str, int] = {}
        for node, _, _ in graph.walk(blueprint.nodes):
            kind = graph.kind_of(node)
            if kind == "tool" and node.tool.component:
                ref = node.tool.component
                if node.tool.version:
                    wanted[f"{ref}@{node.tool.version}"] = node.tool.version
                wanted.setdefault(ref, 0)
            elif kind == "agent":
                if node.agent.agent:
                    wanted.setdefault(node.agent.agent, 0)
                for tool in node.agent.tools:
                    wanted.setdefault(tool, 0)
            elif kind == "code" and node.code.WhichOneof("source_kind") == "component":
                wanted.setdefault(node.code.component, 0)
            elif kind == "workflow" and node.workflow.WhichOneof("target") == "component":
                wanted.setdefault(node.workflow.component, 0)
        for key, version in wanted.items():
            ref = key.split("@", 1)[0]
            pinned = version or (pins or {}).get(ref, 0)
            component = await self.component(conn, project_id, ref, pinned)
            if component is None:
                if "@" in key:
                    missing.append(key)
                continue
            if "@" not in key:
                found[ref] = component.info()
                if component.builtin is None:
                    new_pins[ref] = component.version
        return found, new_pins, missing
