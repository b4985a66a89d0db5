"""Components through the registry service: kinds, versions, etags, request_id, built-ins
(read-only, in every project), validation of implementations and schemas, workflow cycles,
SearchComponents on a labelled set, tenant isolation."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import pytest
import wasmtime
import yaml
from google.protobuf import field_mask_pb2
from iceos.registry.v1 import component_pb2, registry_pb2

from services.common.principal import Role
from tests.support.errors import error_reason, violations
from tests.support.registry import blueprint, component, hello, http, python_tool, stub

LABELLED = Path(__file__).parent / "registry_search" / "labelled.yaml"


def _create(s, tenant, component_id, message, request_id=""):  # type: ignore[no-untyped-def]
    return s.CreateComponent(registry_pb2.CreateComponentRequest(
        parent=tenant.parent, component_id=component_id, component=message,
        request_id=request_id), metadata=tenant.md())


def _refused(call, request, tenant, code=grpc.StatusCode.INVALID_ARGUMENT):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=tenant.md())
    assert info.value.code() == code, info.value.details()
    return info.value


def test_tool_lifecycle_and_versions(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        created = _create(s, tenant, "word_count", python_tool(tags=["text"]),
                          request_id="c-1")
        assert created.kind == component_pb2.COMPONENT_KIND_TOOL
        assert (created.version, created.builtin) == (1, False)
        assert _create(s, tenant, "word_count", python_tool(), request_id="c-1") == created

        change = component_pb2.Component(name=created.name, etag=created.etag,
                                         description="counts words, fast")
        v2 = s.UpdateComponent(registry_pb2.UpdateComponentRequest(
            component=change, update_mask=field_mask_pb2.FieldMask(paths=["description"])),
            metadata=tenant.md())
        assert (v2.version, v2.description) == (2, "counts words, fast")
        assert v2.tool.python_source == created.tool.python_source
        _refused(s.UpdateComponent, registry_pb2.UpdateComponentRequest(
            component=change, update_mask=field_mask_pb2.FieldMask(paths=["description"])),
            tenant, grpc.StatusCode.ABORTED)
        # A nested mask path replaces just that part of the spec.
        source = "def main(inputs):\n    return {'count': 0}\n"
        v3 = s.UpdateComponent(registry_pb2.UpdateComponentRequest(
            component=component_pb2.Component(name=created.name, tool=component_pb2.ToolSpec(
                python_source=source)),
            update_mask=field_mask_pb2.FieldMask(paths=["tool.python_source"])),
            metadata=tenant.md())
        assert v3.version == 3 and v3.tool.python_source == source
        assert v3.tool.input_schema == created.tool.input_schema
        # A component's kind cannot change.
        error = _refused(s.UpdateComponent, registry_pb2.UpdateComponentRequest(
            component=component_pb2.Component(
                name=created.name, agent=component_pb2.AgentSpec(model="deterministic")),
            update_mask=field_mask_pb2.FieldMask(paths=["agent"])), tenant)
        assert violations(error) == [("component.agent", "KIND_CHANGE")]
        error = _refused(s.UpdateComponent, registry_pb2.UpdateComponentRequest(
            component=component_pb2.Component(name=created.name),
            update_mask=field_mask_pb2.FieldMask(paths=["version", "nope"])), tenant)
        assert violations(error) == [("update_mask.paths[0]", "BAD_MASK"),
                                     ("update_mask.paths[1]", "BAD_MASK")]

        versions = s.ListComponentVersions(registry_pb2.ListComponentVersionsRequest(
            parent=created.name, page_size=2), metadata=tenant.md(Role.VIEWER))
        assert [v.version for v in versions.versions] == [3, 2]
        rest = s.ListComponentVersions(registry_pb2.ListComponentVersionsRequest(
            parent=created.name, page_size=2, page_token=versions.next_page_token),
            metadata=tenant.md(Role.VIEWER))
        assert [v.version for v in rest.versions] == [1] and not rest.next_page_token

        s.DeleteComponent(registry_pb2.DeleteComponentRequest(name=created.name,
                                                              etag=v3.etag),
                          metadata=tenant.md())
        _refused(s.GetComponent, registry_pb2.GetComponentRequest(name=created.name), tenant,
                 grpc.StatusCode.NOT_FOUND)
        old = s.GetComponentVersion(registry_pb2.GetComponentVersionRequest(
            name=f"{created.name}/versions/1"), metadata=tenant.md(Role.VIEWER))
        assert old.component.description == "count the words in a text"


def test_builtins_are_visible_read_only_everywhere(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        _create(s, tenant, "mine", python_tool())
        for who in (tenant, other_tenant):
            got = s.GetComponent(registry_pb2.GetComponentRequest(
                name="builtins/http_request"), metadata=who.md(Role.VIEWER))
            assert got.builtin and got.kind == component_pb2.COMPONENT_KIND_TOOL
            assert got.tool.builtin == "http_request" and "url" in \
                got.tool.input_schema["properties"]
        listed = s.ListComponents(registry_pb2.ListComponentsRequest(
            parent=tenant.parent), metadata=tenant.md(Role.VIEWER))
        names = [c.name for c in listed.components]
        assert names[-1] == f"{tenant.parent}/components/mine"
        assert "builtins/http_request" in names and names[:-1] == sorted(names[:-1])
        other = s.ListComponents(registry_pb2.ListComponentsRequest(
            parent=other_tenant.parent), metadata=other_tenant.md())
        assert all(c.builtin for c in other.components)

        # Paging walks the built-ins, then the project's components.
        seen, token = [], ""
        while True:
            page = s.ListComponents(registry_pb2.ListComponentsRequest(
                parent=tenant.parent, page_size=4, page_token=token), metadata=tenant.md())
            seen += [c.name for c in page.components]
            token = page.next_page_token
            if not token:
                break
        assert seen == names
        only_mine = s.ListComponents(registry_pb2.ListComponentsRequest(
            parent=tenant.parent, filter="builtin = false AND kind = TOOL"),
            metadata=tenant.md())
        assert [c.name for c in only_mine.components] == [f"{tenant.parent}/components/mine"]
        web = s.ListComponents(registry_pb2.ListComponentsRequest(
            parent=tenant.parent, filter='tags: "web"'), metadata=tenant.md())
        assert [c.name for c in web.components] == ["builtins/http_request"]

        for call, request in [
            (s.UpdateComponent, registry_pb2.UpdateComponentRequest(
                component=component_pb2.Component(name="builtins/template",
                                                  description="mine now"))),
            (s.DeleteComponent, registry_pb2.DeleteComponentRequest(name="builtins/template")),
        ]:
            error = _refused(call, request, tenant, grpc.StatusCode.FAILED_PRECONDITION)
            assert error_reason(error) == "BUILTIN_READ_ONLY"
        _refused(s.GetComponent, registry_pb2.GetComponentRequest(name="builtins/nope"), tenant,
                 grpc.StatusCode.NOT_FOUND)

    status, got = http(stack.edge.url, "GET", "/v1/builtins/text_split",
                       tenant.headers(Role.VIEWER))
    assert status == 200 and got["builtin"] is True and got["kind"] == "COMPONENT_KIND_TOOL"


def test_invalid_components_name_each_problem(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ({"tool": {"inputSchema": {"type": "object"}}},
         [("component.tool.python_source", "REQUIRED")]),
        ({"tool": {"builtin": "http_request", "inputSchema": {"type": "object"}}},
         [("component.tool.builtin", "BUILTIN_RESERVED")]),
        ({"tool": {"pythonSource": "def main(inputs):\n  return (", "inputSchema": {}}},
         [("component.tool.python_source", "PYTHON_SYNTAX")]),
        ({"tool": {"pythonSource": "def run(x):\n  return 1\n", "inputSchema": {}}},
         [("component.tool.python_source", "PYTHON_SYNTAX")]),
        ({"tool": {"pythonSource": "def main(i):\n  return 1\n"}},
         [("component.tool.input_schema", "REQUIRED")]),
        ({"tool": {"pythonSource": "def main(i):\n  return 1\n",
                   "inputSchema": {"type": "object",
                                   "properties": {"n": {"type": "integr"}}},
                   "outputSchema": {"required": "yes"}}},
         [("component.tool.input_schema.properties.n.type", "BAD_SCHEMA"),
          ("component.tool.output_schema.required", "BAD_SCHEMA")]),
        ({"tool": {"wasmModule": base64.b64encode(b"not wasm").decode(), "inputSchema": {}}},
         [("component.tool.wasm_module", "BAD_WASM")]),
        ({"tool": {"wasmModule": base64.b64encode(b"\x00asm\x01\x00\x00\x00junk").decode(),
                   "inputSchema": {}}},
         [("component.tool.wasm_module", "BAD_WASM")]),
        ({"agent": {"systemPrompt": "hi", "tools": ["builtins/nope", "ghost"],
                    "maxIterations": 500}},
         [("component.agent.model", "REQUIRED"), ("component.agent.max_iterations", "OUT_OF_RANGE"),
          ("component.agent.tools[0]", "UNKNOWN_COMPONENT"),
          ("component.agent.tools[1]", "UNKNOWN_COMPONENT")]),
        ({"code": {"pythonSource": ""}}, [("component.code.python_source", "REQUIRED")]),
        ({"workflow": {"blueprint": "does-not-exist"}},
         [("component.workflow.blueprint", "UNKNOWN_BLUEPRINT")]),
        ({"displayName": "x", "tags": ["ok", "ok", "bad tag"]},
         [("component.tags[1]", "DUPLICATE"), ("component.tags[2]", "BAD_TAG"),
          ("component", "NO_KIND")]),
    ]
    with stack.channel("registry") as channel:
        s = stub(channel)
        for spec, expected in cases:
            error = _refused(s.CreateComponent, registry_pb2.CreateComponentRequest(
                parent=tenant.parent, component_id="bad", component=component(spec)), tenant)
            assert violations(error) == expected, spec
        wasm = bytes(wasmtime.wat2wasm('(module (func (export "_start")))'))
        ok = _create(s, tenant, "wasm_tool", component(
            {"description": "a WASM tool", "tool": {"wasmModule": base64.b64encode(wasm).decode(),
                                                    "inputSchema": {"type": "object"}}}))
        assert ok.tool.wasm_module == wasm
        # WAT text sent where the binary belongs: the answer says how to fix it.
        wat = b'(module (func (export "_start")))'
        error = _refused(s.CreateComponent, registry_pb2.CreateComponentRequest(
            parent=tenant.parent, component_id="wat_tool", component=component(
                {"tool": {"wasmModule": base64.b64encode(wat).decode(), "inputSchema": {}}})),
            tenant)
        assert violations(error) == [("component.tool.wasm_module", "BAD_WASM")]
        assert "compile it to the binary format first" in error.details()


def test_workflow_cycles_are_refused(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        base = s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
            parent=tenant.parent, blueprint_id="base", blueprint=hello()), metadata=tenant.md())
        wf = _create(s, tenant, "base_wf", component({"workflow": {"blueprint": "base"}}))
        # base -> base_wf -> base: refused at the workflow node that closes the loop.
        looping = hello()
        looping.nodes.add(id="again", workflow={"component": "base_wf"})
        looping.name, looping.etag = base.name, base.etag
        error = _refused(s.UpdateBlueprint, registry_pb2.UpdateBlueprintRequest(
            blueprint=looping), tenant)
        assert violations(error) == [("blueprint.nodes[2].workflow.component", "WORKFLOW_CYCLE")]
        assert "component base_wf -> blueprint base" in error.details()
        # Directly to itself.
        direct = hello()
        direct.nodes.add(id="self", workflow={"blueprint": base.name})
        direct.name = base.name
        error = _refused(s.UpdateBlueprint, registry_pb2.UpdateBlueprintRequest(
            blueprint=direct), tenant)
        assert violations(error) == [("blueprint.nodes[2].workflow.blueprint", "WORKFLOW_CYCLE")]
        # A pinned old version without workflows is not a cycle.
        pinned = hello()
        pinned.nodes.add(id="old", workflow={"blueprint": "base", "version": 1})
        pinned.name = base.name
        assert s.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(blueprint=pinned),
                                 metadata=tenant.md()).version == 2
        # outer -> base_wf is fine; then base_wf -> outer would close outer -> base_wf -> outer.
        outer = hello()
        outer.nodes.add(id="inner", workflow={"component": "base_wf"})
        s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
            parent=tenant.parent, blueprint_id="outer", blueprint=outer), metadata=tenant.md())
        error = _refused(s.UpdateComponent, registry_pb2.UpdateComponentRequest(
            component=component_pb2.Component(
                name=wf.name, workflow=component_pb2.WorkflowSpec(blueprint="outer"))), tenant)
        assert violations(error) == [("component.workflow.blueprint", "WORKFLOW_CYCLE")]
        # Validate finds the same cycle when told which blueprint the content is for.
        result = s.ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=looping), metadata=tenant.md(Role.VIEWER))
        assert [(v.field, v.reason) for v in result.violations] == [
            ("nodes[2].workflow.component", "WORKFLOW_CYCLE")]


def test_search_ranks_the_expected_component_first(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    labelled = yaml.safe_load(LABELLED.read_text())
    with stack.channel() as channel:
        s = stub(channel)
        for component_id, spec in labelled["components"].items():
            _create(s, tenant, component_id, component(spec))
        misses = []
        for query, expected in labelled["queries"].items():
            found = s.SearchComponents(registry_pb2.SearchComponentsRequest(
                parent=tenant.parent, query=query, page_size=3),
                metadata=tenant.md(Role.VIEWER))
            assert len(found.results) == 3
            assert found.results[0].score >= found.results[1].score >= found.results[2].score
            first = found.results[0].component.name
            want = expected if expected.startswith("builtins/") else \
                f"{tenant.parent}/components/{expected}"
            if first != want:
                misses.append((query, first))
        assert misses == []

        agents = s.SearchComponents(registry_pb2.SearchComponentsRequest(
            parent=tenant.parent, query="answer a customer",
            kinds=[component_pb2.COMPONENT_KIND_AGENT]), metadata=tenant.md())
        assert [r.component.name for r in agents.results] == \
            [f"{tenant.parent}/components/support_triage"]
        # Another tenant sees the built-ins, never this tenant's components.
        theirs = s.SearchComponents(registry_pb2.SearchComponentsRequest(
            parent=other_tenant.parent, query="post a message to a Slack channel",
            page_size=100), metadata=other_tenant.md())
        assert theirs.results and all(r.component.builtin for r in theirs.results)
        # Deleted components drop out of search.
        s.DeleteComponent(registry_pb2.DeleteComponentRequest(
            name=f"{tenant.parent}/components/slack_notify"), metadata=tenant.md())
        after = s.SearchComponents(registry_pb2.SearchComponentsRequest(
            parent=tenant.parent, query="post a message to a Slack channel", page_size=100),
            metadata=tenant.md())
        assert f"{tenant.parent}/components/slack_notify" not in \
            [r.component.name for r in after.results]
        for request, field in [
            (registry_pb2.SearchComponentsRequest(parent=tenant.parent, query="  "), "query"),
            (registry_pb2.SearchComponentsRequest(parent=tenant.parent, query="x",
                                                  page_size=101), "page_size"),
        ]:
            error = _refused(s.SearchComponents, request, tenant)
            assert [f for f, _ in violations(error)] == [field]

    status, body = http(stack.edge.url, "POST", f"/v1/{tenant.parent}/components:search",
                        tenant.headers(Role.VIEWER), {"query": "fetch a web page"})
    assert status == 200 and body["results"][0]["component"]["name"] == "builtins/http_request"


def test_components_json_and_tenancy(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    edge = stack.edge.url
    spec = {"description": "say hi", "code": {"pythonSource": "def main(inputs):\n  return 1\n"}}
    status, created = http(edge, "POST", f"/v1/{tenant.parent}/components?componentId=hi",
                           tenant.headers(), spec)
    assert status == 200 and created["kind"] == "COMPONENT_KIND_CODE"
    status, _ = http(edge, "GET", f"/v1/{created['name']}", other_tenant.headers(Role.ADMIN))
    assert status == 404
    status, _ = http(edge, "POST", f"/v1/{tenant.parent}/components?componentId=hi2",
                     tenant.headers(Role.VIEWER), spec)
    assert status == 403
    status, error = http(edge, "GET", f"/v1/{tenant.parent}/components?filter=kind%3DBANANA",
                         tenant.headers(Role.VIEWER))
    assert status == 400 and "BANANA" in error["message"]
    status, _ = http(edge, "DELETE", f"/v1/{created['name']}?etag=stale", tenant.headers())
    assert status == 409
    # A blueprint may call the code component; a tool node may not.
    with stack.channel() as channel:
        result = stub(channel).ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=blueprint({"nodes": [
                {"id": "ok", "code": {"component": "hi"}},
                {"id": "bad", "tool": {"component": created["name"]}}]})),
            metadata=tenant.md())
        assert [(v.field, v.reason) for v in result.violations] == [
            ("nodes[1].tool.component", "WRONG_COMPONENT_KIND")]
