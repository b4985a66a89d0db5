"""Components: tools, agents, code and workflows, versioned like blueprints. The built-in tools
appear read-only in every project as `builtins/<name>`."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import psycopg
import wasmtime
from google.protobuf import json_format
from iceos.registry.v1 import component_pb2

from services.common import builtins, errors, names, pagination
from services.common.blueprint import validate
from services.common.embedding import DEFAULT_EMBEDDER, Embedder

from . import convert, filters, references, store
from .versioned import Page, Prepared, Versioned

SPEC_KINDS = ("tool", "agent", "code", "workflow")
MAX_PYTHON_BYTES = 1024 * 1024
MAX_WASM_BYTES = 8 * 1024 * 1024
MAX_SYSTEM_PROMPT_CHARS = 64 * 1024
MAX_TAGS = 32
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,62}$")
LIMITS = validate.Limits()


@lru_cache(maxsize=1)
def _wasm_engine() -> wasmtime.Engine:
    return wasmtime.Engine()


def search_text(display_name: str, description: str, resource_id: str,
                tags: list[str] | tuple[str, ...]) -> str:
    """What a component's embedding is made from: its words, id split into words, tags."""
    words = re.sub(r"[_\-/]+", " ", resource_id)
    return f"{display_name}. {words}. {description} {' '.join(tags)}"


def builtin_records() -> list[tuple[builtins.BuiltinTool, dict[str, Any]]]:
    """Built-ins with the fields filters see."""
    return [(tool, {"display_name": tool.display_name, "description": tool.description,
                    "kind": "tool", "builtin": True, "tags": list(tool.tags)})
            for tool in builtins.all_tools()]


class Components(Versioned):
    table = store.COMPONENTS
    collection = "components"
    singular = "component"
    filter_fields = filters.COMPONENT_FIELDS
    writable = ("display_name", "description", "tags", *SPEC_KINDS)
    output_only = convert.COMPONENT_OUTPUT_ONLY

    def __init__(self, db: Any, embedder: Embedder = DEFAULT_EMBEDDER) -> None:
        super().__init__(db)
        self.embedder = embedder

    # -- validation -------------------------------------------------------------------------

    async def prepare(self, conn: psycopg.AsyncConnection, project_id: str, resource_id: str,
                      content: component_pb2.Component, *, prefix: str) -> Prepared:
        v = errors.Violations()
        kind = content.WhichOneof("spec")
        if len(content.display_name) > LIMITS.max_display_name_chars:
            v.add(f"{prefix}.display_name",
                  f"is longer than {LIMITS.max_display_name_chars} characters", "TOO_LONG")
        if len(content.description) > LIMITS.max_description_chars:
            v.add(f"{prefix}.description",
                  f"is longer than {LIMITS.max_description_chars} characters", "TOO_LONG")
        self._tags(content.tags, f"{prefix}.tags", v)
        if kind is None:
            v.add(prefix, "has no spec: set one of tool, agent, code or workflow", "NO_KIND")
        else:
            path = f"{prefix}.{kind}"
            if kind == "tool":
                self._tool(content.tool, path, v)
            elif kind == "code":
                self._code(content.code, path, v)
            elif kind == "agent":
                await self._agent(conn, project_id, content.agent, path, v)
            else:
                await self._workflow(conn, project_id, resource_id, content.workflow, path, v)
        if v:
            raise errors.InvalidArgument(
                "the component is not valid: " + "; ".join(
                    f"{i.field}: {i.description}" for i in v.items[:3]), v.items,
                reason="INVALID_COMPONENT")
        text = search_text(content.display_name, content.description, resource_id,
                           list(content.tags))
        return Prepared(convert.spec_of(content), content.SerializeToString(), {
            "display_name": content.display_name, "description": content.description,
            "kind": kind, "tags": list(content.tags),
            "embedding": self.embedder.embed(text), "embedder": self.embedder.name})

    @staticmethod
    def _tags(tags: Any, path: str, v: errors.Violations) -> None:
        if len(tags) > MAX_TAGS:
            v.add(path, f"has {len(tags)} tags; the limit is {MAX_TAGS}", "TOO_MANY")
        seen = set()
        for index, tag in enumerate(tags):
            if not TAG.match(tag):
                v.add(f"{path}[{index}]", f"{tag!r} is not a valid tag: letters, digits and "
                      "_ . : / -, starting with a letter or digit, at most 63", "BAD_TAG")
            elif tag in seen:
                v.add(f"{path}[{index}]", f"duplicate tag {tag!r}", "DUPLICATE")
            seen.add(tag)

    @staticmethod
    def _schema(message: Any, name: str, path: str, v: errors.Violations,
                required: bool = False) -> None:
        if not message.HasField(name):
            if required:
                v.add(f"{path}.{name}", "is required: a JSON Schema for the arguments, e.g. "
                                        '{"type": "object", "properties": {…}}', "REQUIRED")
            return
        for where, problem in validate.schema_problems(
                json_format.MessageToDict(getattr(message, name))):
            v.add(f"{path}.{name}" + (f".{where}" if where and not where.startswith("[")
                                      else where), problem, "BAD_SCHEMA")

    @staticmethod
    def _python(source: str, path: str, v: errors.Violations) -> None:
        if not source.strip():
            v.add(path, "is required: Python source defining main(inputs)", "REQUIRED")
        elif len(source.encode()) > MAX_PYTHON_BYTES:
            v.add(path, f"is larger than {MAX_PYTHON_BYTES} bytes", "TOO_LARGE")
        else:
            for problem in validate.python_problems(source):
                v.add(path, problem, "PYTHON_SYNTAX")

    def _tool(self, tool: component_pb2.ToolSpec, path: str, v: errors.Violations) -> None:
        which = tool.WhichOneof("implementation")
        if which is None:
            v.add(f"{path}.python_source", "is required: implement the tool with Python "
                  "source (main(inputs)) or a WASM module (wasm_module)", "REQUIRED")
        elif which == "builtin":
            v.add(f"{path}.builtin", "only iceOS's built-in catalog uses this; use a built-in "
                  "directly as builtins/<name>, or implement the tool with python_source or "
                  "wasm_module", "BUILTIN_RESERVED")
        elif which == "python_source":
            self._python(tool.python_source, f"{path}.python_source", v)
        else:
            module = tool.wasm_module
            if len(module) > MAX_WASM_BYTES:
                v.add(f"{path}.wasm_module", f"is {len(module)} bytes; the limit is "
                      f"{MAX_WASM_BYTES}", "TOO_LARGE")
            elif not module.startswith(b"\x00asm"):
                hint = ("; it looks like WAT text: compile it to the binary format first "
                        "(wasmtime.wat2wasm or wat2wasm)" if module.lstrip()[:1] == b"(" else "")
                v.add(f"{path}.wasm_module", "is not a binary WebAssembly module (no \\0asm "
                      f"header){hint}", "BAD_WASM")
            else:
                try:
                    wasmtime.Module.validate(_wasm_engine(), module)
                except Exception as exc:  # wasmtime's parser says what is wrong
                    v.add(f"{path}.wasm_module", f"is not a valid WebAssembly module: "
                          f"{str(exc).splitlines()[0][:200]}", "BAD_WASM")
        self._schema(tool, "input_schema", path, v, required=True)
        self._schema(tool, "output_schema", path, v)

    def _code(self, code: component_pb2.CodeSpec, path: str, v: errors.Violations) -> None:
        self._python(code.python_source, f"{path}.python_source", v)
        self._schema(code, "input_schema", path, v)
        self._schema(code, "output_schema", path, v)

    async def _agent(self, conn: psycopg.AsyncConnection, project_id: str,
                     agent: component_pb2.AgentSpec, path: str, v: errors.Violations) -> None:
        if not agent.model.strip():
            v.add(f"{path}.model", "is required: `deterministic` or `{provider}/{model}`",
                  "REQUIRED")
        if len(agent.system_prompt) > MAX_SYSTEM_PROMPT_CHARS:
            v.add(f"{path}.system_prompt", f"is longer than {MAX_SYSTEM_PROMPT_CHARS} "
                  "characters", "TOO_LONG")
        if not 0 <= agent.max_iterations <= LIMITS.max_agent_iterations:
            v.add(f"{path}.max_iterations",
                  f"must be between 0 and {LIMITS.max_agent_iterations}", "OUT_OF_RANGE")
        lookup = await references.component_lookup(conn, project_id, agent.tools)
        for index, ref in enumerate(agent.tools):
            info = lookup(ref)
            if info is None:
                v.add(f"{path}.tools[{index}]", f"tool {ref!r} does not exist in this project "
                      "(use an id, a full name or builtins/<name>)", "UNKNOWN_COMPONENT")
            elif info.kind != "tool":
                v.add(f"{path}.tools[{index}]", f"component {ref!r} is a {info.kind}, not a "
                      "tool", "WRONG_COMPONENT_KIND")

    async def _workflow(self, conn: psycopg.AsyncConnection, project_id: str,
                        resource_id: str, workflow: component_pb2.WorkflowSpec, path: str,
                        v: errors.Violations) -> None:
        if workflow.version < 0:
            v.add(f"{path}.version", "must not be negative", "OUT_OF_RANGE")
        if not workflow.blueprint.strip():
            v.add(f"{path}.blueprint", "is required: the blueprint this workflow runs",
                  "REQUIRED")
            return
        self_key = ("component", resource_id, 0)
        index = await references.workflow_index(
            conn, project_id, [("blueprint", workflow.blueprint, max(workflow.version, 0))],
            self_key)
        key = index.key("blueprint", workflow.blueprint, max(workflow.version, 0))
        if key is None or not index.exists(key):
            pinned = f" version {workflow.version}" if workflow.version else ""
            v.add(f"{path}.blueprint", f"blueprint {workflow.blueprint!r}{pinned} does not "
                  "exist in this project", "UNKNOWN_BLUEPRINT")
            return
        cycle = index.cycle_from(key)
        if cycle:
            chain = " -> ".join(f"{k[0]} {k[1]}" for k in [self_key, *cycle])
            v.add(f"{path}.blueprint", f"workflow cycle: {chain}; a run would start itself "
                  "without end", "WORKFLOW_CYCLE")

    # -- protos -----------------------------------------------------------------------------

    def to_proto(self, row: dict[str, Any]) -> component_pb2.Component:
        return convert.component(row)

    def version_proto(self, row: dict[str, Any]) -> Any:
        return convert.component_version(row)

    def check_change(self, old: Any, new: Any) -> None:
        before, after = old.WhichOneof("spec"), new.WhichOneof("spec")
        if before != after:
            raise errors.InvalidArgument.field(
                f"component.{after or before}", f"a component's kind cannot change (it is a "
                f"{before}); create a new component instead", "KIND_CHANGE")

    # -- built-ins --------------------------------------------------------------------------

    async def get(self, name: str) -> Any:
        if name.startswith("builtins/"):
            tool = builtins.get(name)
            if tool is None or name.count("/") != 1:
                raise errors.NotFound(f"built-in {name} not found; ListComponents shows the "
                                      "catalog", reason="COMPONENT_NOT_FOUND",
                                      metadata={"resource": name})
            return convert.builtin_component(tool)
        return await super().get(name)

    def refuse_builtin(self, name: str) -> None:
        if name.startswith("builtins/"):
            raise errors.FailedPrecondition(
                f"{name} is a built-in: built-ins are read-only; create your own component "
                "instead", reason="BUILTIN_READ_ONLY", metadata={"resource": name})

    async def update(self, message: Any, mask: Any) -> Any:
        self.refuse_builtin(message.name)
        return await super().update(message, mask)

    async def delete(self, name: str, etag: str) -> None:
        self.refuse_builtin(name)
        await super().delete(name, etag)

    async def list(self, parent: str, page_size: int, page_token: str,
                   filter_text: str) -> Page:
        """Built-ins first (by name), then the project's components by id."""
        project_id = names.project_of(parent)
        size = pagination.page_size(page_size)
        conditions = filters.parse(filter_text, self.filter_fields)
        scope = pagination.scope_for(self.collection, parent, filter_text)
        state = pagination.decode(page_token, scope=scope) if page_token else {}
        items: list[Any] = []
        if state.get("section", "builtins") == "builtins":
            after = state.get("after") or ""
            for tool, record in builtin_records():
                if tool.name > after and filters.matches(conditions, record):
                    items.append(convert.builtin_component(tool))
            if len(items) > size:
                return Page(items[:size], pagination.encode(
                    {"section": "builtins", "after": items[size - 1].name.split("/", 1)[1]},
                    scope=scope))
            state = {}
        after_id = state.get("after") if state.get("section") == "project" else None
        async with self.db.connection() as conn:
            rows = await store.list_latest(conn, self.table, project_id, conditions,
                                           [after_id] if after_id else None,
                                           size - len(items) + 1)
        more = len(rows) > size - len(items)
        rows = rows[:size - len(items)]
        items += [self.to_proto(r) for r in rows]
        token = ""
        if more:
            last = rows[-1]["id"] if rows else ""
            token = pagination.encode({"section": "project", "after": last}, scope=scope)
        return Page(items, token)
