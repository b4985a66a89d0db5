"""Blueprints through the registry service, over gRPC (edge and direct) and JSON on Envoy:
create/get/list/update/delete, versions, etags, idempotency, pagination, validation errors."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from iceos.registry.v1 import blueprint_pb2, registry_pb2

from services.common.principal import Role
from tests.conftest import db_execute
from tests.support.processes import wait_for
from tests.support.errors import error_reason, violations
from tests.support.registry import blueprint, hello, http, stub


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, encoded by hand."""
    def varint(value: int) -> bytes:
        out = b""
        while True:
            byte, value = value & 0x7F, value >> 7
            out += bytes([byte | (0x80 if value else 0)])
            if not value:
                return out
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _create(s, tenant, blueprint_id: str, bp=None, request_id: str = "", role=Role.EDITOR):  # type: ignore[no-untyped-def]
    return s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
        parent=tenant.parent, blueprint_id=blueprint_id, blueprint=bp or hello(),
        request_id=request_id), metadata=tenant.md(role))


def test_create_get_update_versions_delete(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        created = _create(s, tenant, "greeter")
        assert created.name == f"{tenant.parent}/blueprints/greeter"
        assert created.version == 1 and created.etag
        assert [n.id for n in created.nodes] == ["greet", "shout"]
        got = s.GetBlueprint(registry_pb2.GetBlueprintRequest(name=created.name),
                             metadata=tenant.md(Role.VIEWER))
        assert got == created

        # A masked update changes only the named field and makes version 2.
        change = blueprint_pb2.Blueprint(name=created.name, etag=created.etag,
                                         display_name="Greeter v2", description="ignored")
        v2 = s.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(
            blueprint=change, update_mask=field_mask_pb2.FieldMask(paths=["display_name"])),
            metadata=tenant.md())
        assert (v2.version, v2.display_name, v2.description) == (2, "Greeter v2", "")
        assert v2.etag != created.etag and len(v2.nodes) == 2

        # The old etag is stale now: ABORTED, and nothing changes.
        with pytest.raises(grpc.RpcError) as info:
            s.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(
                blueprint=blueprint_pb2.Blueprint(name=created.name, etag=created.etag,
                                                  display_name="lost"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"])),
                metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert s.GetBlueprint(registry_pb2.GetBlueprintRequest(name=created.name),
                              metadata=tenant.md()).display_name == "Greeter v2"

        # Replacing everything (no mask) makes version 3.
        replacement = hello("third")
        replacement.name, replacement.etag = created.name, v2.etag
        v3 = s.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(blueprint=replacement),
                               metadata=tenant.md())
        assert (v3.version, v3.display_name) == (3, "third")

        versions = s.ListBlueprintVersions(registry_pb2.ListBlueprintVersionsRequest(
            parent=created.name), metadata=tenant.md(Role.VIEWER))
        assert [v.version for v in versions.versions] == [3, 2, 1]
        assert versions.versions[2].blueprint.display_name == "hello"
        assert versions.versions[0].creator.startswith(f"{tenant.parent}/tokens/")

        # Delete with a stale etag is refused; with the current one it goes, and versions
        # stay readable for runs that pinned them.
        with pytest.raises(grpc.RpcError) as info:
            s.DeleteBlueprint(registry_pb2.DeleteBlueprintRequest(name=created.name,
                                                                  etag=v2.etag),
                              metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.ABORTED
        s.DeleteBlueprint(registry_pb2.DeleteBlueprintRequest(name=created.name, etag=v3.etag),
                          metadata=tenant.md())
        with pytest.raises(grpc.RpcError) as info:
            s.GetBlueprint(registry_pb2.GetBlueprintRequest(name=created.name),
                           metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        pinned = s.GetBlueprintVersion(registry_pb2.GetBlueprintVersionRequest(
            name=f"{created.name}/versions/2"), metadata=tenant.md(Role.VIEWER))
        assert pinned.blueprint.display_name == "Greeter v2" and pinned.version == 2

        # The id can be used again; numbering goes on so old pins stay unambiguous.
        again = _create(s, tenant, "greeter")
        assert again.version == 4


def test_request_id_makes_create_idempotent(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel("registry") as channel:
        s = stub(channel)
        first = _create(s, tenant, "once", request_id="req-123")
        retry = _create(s, tenant, "once", request_id="req-123")
        assert retry == first
        # Same request id, even with another id: the first result, nothing new.
        other = _create(s, tenant, "twice", request_id="req-123")
        assert other.name == first.name
        with pytest.raises(grpc.RpcError) as info:
            s.GetBlueprint(registry_pb2.GetBlueprintRequest(
                name=f"{tenant.parent}/blueprints/twice"), metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        # Without a request id a second create of the same id is ALREADY_EXISTS.
        with pytest.raises(grpc.RpcError) as info:
            _create(s, tenant, "once")
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_filter_and_pagination(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        for i in range(7):
            _create(s, tenant, f"bp-{i}", hello("special" if i % 3 == 0 else "plain"))
        seen, token = [], ""
        while True:
            page = s.ListBlueprints(registry_pb2.ListBlueprintsRequest(
                parent=tenant.parent, page_size=3, page_token=token),
                metadata=tenant.md(Role.VIEWER))
            assert len(page.blueprints) <= 3
            seen += [b.name.rsplit("/", 1)[1] for b in page.blueprints]
            token = page.next_page_token
            if not token:
                break
        assert seen == [f"bp-{i}" for i in range(7)]
        special = s.ListBlueprints(registry_pb2.ListBlueprintsRequest(
            parent=tenant.parent, filter='display_name = "special"'), metadata=tenant.md())
        assert [b.name.rsplit("/", 1)[1] for b in special.blueprints] == ["bp-0", "bp-3", "bp-6"]
        later = s.ListBlueprints(registry_pb2.ListBlueprintsRequest(
            parent=tenant.parent, filter='create_time > "2000-01-01T00:00:00Z" AND '
                                         'display_name: "SPEC"'), metadata=tenant.md())
        assert len(later.blueprints) == 3

        first = s.ListBlueprints(registry_pb2.ListBlueprintsRequest(
            parent=tenant.parent, page_size=2), metadata=tenant.md())
        body, signature = first.next_page_token.split(".")
        bad_requests = [
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent, page_size=1001),
             "page_size"),
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent, page_size=-1),
             "page_size"),
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent,
                                                page_token=body[:-2] + "xx." + signature),
             "page_token"),
            # A token from an unfiltered list is not valid for a filtered one.
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent, filter='display_name = "x"',
                                                page_token=first.next_page_token),
             "page_token"),
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent, filter="display_name ~ 1"),
             "filter"),
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent, filter="colour = 'red'"),
             "filter"),
            (registry_pb2.ListBlueprintsRequest(parent=tenant.parent,
                                                filter='create_time > "last week"'), "filter"),
        ]
        for request, field in bad_requests:
            with pytest.raises(grpc.RpcError) as info:
                s.ListBlueprints(request, metadata=tenant.md())
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
            assert [f for f, _ in violations(info.value)] == [field]


def test_invalid_blueprints_are_refused_with_every_violation(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    bad = blueprint({"nodes": [
        {"id": "a", "dependsOn": ["ghost"], "llm": {"model": "deterministic", "prompt": "x"}},
        {"id": "a", "tool": {"component": "no_such_tool"}},
        {"id": "each", "loop": {"items": "inputs.xs", "body": [
            {"id": "inner", "dependsOn": ["nope"], "llm": {"model": "m", "prompt": "{{ item }}"}}]}},
    ]})
    with stack.channel() as channel:
        s = stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            _create(s, tenant, "broken", bad)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(info.value) == "INVALID_BLUEPRINT"
        assert sorted(violations(info.value)) == sorted([
            ("blueprint.nodes[0].depends_on[0]", "UNKNOWN_DEPENDENCY"),
            ("blueprint.nodes[1].id", "DUPLICATE_ID"),
            ("blueprint.nodes[1].tool.component", "UNKNOWN_COMPONENT"),
            ("blueprint.nodes[2].loop.body[0].depends_on[0]", "UNKNOWN_DEPENDENCY"),
        ])
        # Validate says the same without the prefix, and writes nothing.
        result = s.ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=bad), metadata=tenant.md(Role.VIEWER))
        assert not result.valid
        assert sorted(v.field for v in result.violations) == [
            "nodes[0].depends_on[0]", "nodes[1].id", "nodes[1].tool.component",
            "nodes[2].loop.body[0].depends_on[0]"]
        assert all(v.description and v.reason for v in result.violations)
        ok = s.ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=hello()), metadata=tenant.md(Role.VIEWER))
        assert ok.valid and not ok.violations
        listed = s.ListBlueprints(registry_pb2.ListBlueprintsRequest(parent=tenant.parent),
                                  metadata=tenant.md())
        assert list(listed.blueprints) == []
        # Updates are validated too, and a refused update leaves the blueprint as it was.
        created = _create(s, tenant, "fine")
        bad.name, bad.etag = created.name, created.etag
        with pytest.raises(grpc.RpcError) as info:
            s.UpdateBlueprint(registry_pb2.UpdateBlueprintRequest(blueprint=bad),
                              metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert s.GetBlueprint(registry_pb2.GetBlueprintRequest(name=created.name),
                              metadata=tenant.md()).version == 1


@pytest.mark.parametrize("blueprint_id", ["", "Upper", "has space", "a/b", "ünï", "x" * 64,
                                          "1starts-with-digit"])
def test_bad_blueprint_ids(stack, tenant, blueprint_id) -> None:  # type: ignore[no-untyped-def]
    with stack.channel("registry") as channel:
        with pytest.raises(grpc.RpcError) as info:
            _create(stub(channel), tenant, blueprint_id)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(info.value) == [("blueprint_id", "BAD_ID")]


def test_invalid_utf8_and_too_deep_messages_name_the_field(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    request = registry_pb2.CreateBlueprintRequest(parent=tenant.parent, blueprint_id="utf",
                                                  blueprint=hello())
    raw = request.SerializeToString().replace(b"greet", b"gr\xffet", 1)
    with stack.channel() as channel:
        call = channel.unary_unary("/iceos.registry.v1.RegistryService/CreateBlueprint")
        with pytest.raises(grpc.RpcError) as info:
            call(raw, metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(info.value) == [("blueprint.nodes[0].id", "INVALID_UTF8")]

        # 60 nested loops: past protobuf's parse limit (the client's own protobuf would not
        # build it either, so the bytes are written by hand), refused with the path.
        inner = blueprint_pb2.Node(id="leaf", llm=blueprint_pb2.LlmNode(model="m", prompt="p"))
        raw_node = inner.SerializeToString()
        for depth in range(60):
            loop = _field(1, b"[1]") + _field(2, raw_node)          # LoopNode.items, .body
            raw_node = _field(1, f"l{depth}".encode()) + _field(14, loop)  # Node.id, .loop
        raw = _field(1, tenant.parent.encode()) + _field(2, _field(6, raw_node))
        call = channel.unary_unary("/iceos.registry.v1.RegistryService/ValidateBlueprint")
        with pytest.raises(grpc.RpcError) as info:
            call(raw, metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        [(field, reason)] = violations(info.value)
        assert reason == "TOO_DEEP" and field.startswith("blueprint.nodes[0].loop.body[0]")

        # 20 levels parse fine but break the language's nesting limit (16).
        node = {"id": "leaf", "llm": {"model": "m", "prompt": "p"}}
        for depth in range(20):
            node = {"id": f"l{depth}", "loop": {"items": "[1]", "body": [node]}}
        result = stub(channel).ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=blueprint({"nodes": [node]})), metadata=tenant.md())
        assert [(v.field, v.reason) for v in result.violations] == [
            ("nodes[0]" + ".loop.body[0]" * 15 + ".loop.body", "TOO_DEEP")]


def test_roles_audit_and_tenant_isolation(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            _create(s, tenant, "viewer-cannot", role=Role.VIEWER)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        created = _create(s, tenant, "private")
        for call, request in [
            (s.GetBlueprint, registry_pb2.GetBlueprintRequest(name=created.name)),
            (s.ListBlueprintVersions,
             registry_pb2.ListBlueprintVersionsRequest(parent=created.name)),
            (s.GetBlueprintVersion,
             registry_pb2.GetBlueprintVersionRequest(name=f"{created.name}/versions/1")),
            (s.DeleteBlueprint, registry_pb2.DeleteBlueprintRequest(name=created.name)),
            (s.ListBlueprints, registry_pb2.ListBlueprintsRequest(parent=tenant.parent)),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                call(request, metadata=other_tenant.md(Role.ADMIN))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND, call
        # The other tenant's own list does not show it.
        assert list(s.ListBlueprints(registry_pb2.ListBlueprintsRequest(
            parent=other_tenant.parent), metadata=other_tenant.md()).blueprints) == []
    def audited() -> list[tuple[str, str]] | None:  # rows land just after each response
        rows = db_execute(stack.database_url,
                          "SELECT method, resource, outcome, actor FROM audit_log"
                          " WHERE project_id = %s ORDER BY id", (tenant.project_id,))
        found = [(a["method"].rsplit("/", 1)[1], a["outcome"]) for a in rows]
        return found if ("CreateBlueprint", "OK") in found and \
            ("CreateBlueprint", "PERMISSION_DENIED") in found else None

    writes = wait_for(audited, 10, what="the audit rows")
    assert ("CreateBlueprint", "PERMISSION_DENIED") in writes
    assert ("CreateBlueprint", "OK") in writes
    assert not any(m.startswith("Get") or m.startswith("List") for m, _ in writes)


def test_json_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    edge, editor, viewer = stack.edge.url, tenant.headers(), tenant.headers(Role.VIEWER)
    spec = {"displayName": "from curl", "nodes": [
        {"id": "greet", "llm": {"model": "deterministic", "prompt": "Hi {{ inputs.name }}"}}]}
    status, created = http(edge, "POST", f"/v1/{tenant.parent}/blueprints?blueprintId=curl"
                                         "&requestId=json-1", editor, spec)
    assert status == 200, created
    assert created["name"] == f"{tenant.parent}/blueprints/curl" and created["version"] == "1"
    status, again = http(edge, "POST", f"/v1/{tenant.parent}/blueprints?blueprintId=curl"
                                       "&requestId=json-1", editor, spec)
    assert (status, again) == (200, created)

    status, got = http(edge, "GET", f"/v1/{created['name']}", viewer)
    assert status == 200 and got["nodes"][0]["llm"]["prompt"] == "Hi {{ inputs.name }}"

    status, updated = http(edge, "PATCH", f"/v1/{created['name']}?updateMask=displayName",
                           editor, {"displayName": "renamed", "etag": created["etag"]})
    assert status == 200 and updated["version"] == "2" and updated["displayName"] == "renamed"
    status, stale = http(edge, "PATCH", f"/v1/{created['name']}?updateMask=displayName",
                         editor, {"displayName": "lost", "etag": created["etag"]})
    assert status == 409, stale

    status, page = http(edge, "GET", f"/v1/{tenant.parent}/blueprints?pageSize=1", viewer)
    assert status == 200 and len(page["blueprints"]) == 1
    status, error = http(edge, "GET", f"/v1/{tenant.parent}/blueprints?pageSize=5000", viewer)
    assert status == 400 and "page_size" in error["message"]
    status, error = http(edge, "GET", f"/v1/{tenant.parent}/blueprints?pageToken=forged.token",
                         viewer)
    assert status == 400 and "page_token" in error["message"]

    status, versions = http(edge, "GET", f"/v1/{created['name']}/versions", viewer)
    assert [v["version"] for v in versions["versions"]] == ["2", "1"]

    # Validation errors come back as google.rpc.Status with BadRequest details.
    status, result = http(edge, "POST", f"/v1/{tenant.parent}/blueprints:validate", viewer,
                          {"blueprint": {"nodes": [{"id": "x", "dependsOn": ["y"],
                                                    "llm": {"model": "m", "prompt": "p"}}]}})
    assert status == 200 and result["valid"] is False
    assert [v["field"] for v in result["violations"]] == ["nodes[0].depends_on[0]"]
    status, error = http(edge, "POST", f"/v1/{tenant.parent}/blueprints?blueprintId=bad",
                         editor, {"nodes": []})
    assert status == 400
    details = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
    assert details[0]["fieldViolations"][0]["field"] == "blueprint.nodes"
    # An unknown node kind in JSON: Envoy's transcoder drops unknown JSON fields (it has no
    # strict mode), so the node arrives without a kind and is refused at its path.
    status, error = http(edge, "POST", f"/v1/{tenant.parent}/blueprints?blueprintId=bad",
                         editor, {"nodes": [{"id": "x", "lop": {}}]})
    details = [d for d in error["details"] if d["@type"].endswith("BadRequest")]
    assert status == 400 and [(v["field"], v["reason"]) for v in
                              details[0]["fieldViolations"]] == [("blueprint.nodes[0]", "NO_KIND")]

    # YAML text is loaded strictly by the registry: the misspelt kind is named.
    source = "nodes:\n  - id: x\n    lop: {}\n  - id: y\n    llm: {model: m, prompt: p, topK: 3}\n"
    status, result = http(edge, "POST", f"/v1/{tenant.parent}/blueprints:validate", viewer,
                          {"source": source})
    assert status == 200 and result["valid"] is False
    assert [(v["field"], v["reason"]) for v in result["violations"]] == [
        ("nodes[0].lop", "UNKNOWN_NODE_KIND"), ("nodes[1].llm.topK", "UNKNOWN_FIELD")]
    status, result = http(edge, "POST", f"/v1/{tenant.parent}/blueprints:validate", viewer,
                          {"source": "nodes:\n  - {id: x, llm: {model: m, prompt: p}}\n"})
    assert status == 200 and result == {"valid": True, "violations": []}

    status, _ = http(edge, "DELETE", f"/v1/{created['name']}?etag={updated['etag']}", editor)
    assert status == 200
    status, _ = http(edge, "GET", f"/v1/{created['name']}", viewer)
    assert status == 404
    status, pinned = http(edge, "GET", f"/v1/{created['name']}/versions/1", viewer)
    assert status == 200 and pinned["blueprint"]["displayName"] == "from curl"


def test_concurrent_updates_with_one_etag_make_exactly_one_version(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel("registry") as channel:
        s = stub(channel)
        created = _create(s, tenant, "contended")
        futures = [s.UpdateBlueprint.future(registry_pb2.UpdateBlueprintRequest(
            blueprint=blueprint_pb2.Blueprint(name=created.name, etag=created.etag,
                                              display_name=f"writer {i}"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"])),
            metadata=tenant.md(), timeout=30) for i in range(8)]
        won, lost = [], 0
        for future in futures:
            try:
                won.append(future.result())
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.ABORTED
                lost += 1
        assert len(won) == 1 and lost == 7
        current = s.GetBlueprint(registry_pb2.GetBlueprintRequest(name=created.name),
                                 metadata=tenant.md())
        assert (current.version, current.display_name) == (2, won[0].display_name)

        # Concurrent retries of one Create (same request_id) all get the same blueprint.
        futures = [s.CreateBlueprint.future(registry_pb2.CreateBlueprintRequest(
            parent=tenant.parent, blueprint_id="raced", blueprint=hello(),
            request_id="race-1"), metadata=tenant.md(), timeout=30) for _ in range(6)]
        results = {f.result().etag for f in futures}
        assert len(results) == 1
        versions = s.ListBlueprintVersions(registry_pb2.ListBlueprintVersionsRequest(
            parent=f"{tenant.parent}/blueprints/raced"), metadata=tenant.md())
        assert [v.version for v in versions.versions] == [1]


def test_oversized_blueprints_are_refused(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    big = blueprint({"nodes": [{"id": "big", "llm": {"model": "deterministic",
                                                     "prompt": "x" * (5 * 1024 * 1024)}}]})
    with stack.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _create(stub(channel), tenant, "big", big)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(info.value) == [("blueprint", "TOO_LARGE")]
        many = blueprint({"nodes": [{"id": f"n{i}", "llm": {"model": "m", "prompt": "p"}}
                                    for i in range(1001)]})
        with pytest.raises(grpc.RpcError) as info:
            _create(stub(channel), tenant, "many", many)
        assert violations(info.value) == [("blueprint.nodes", "TOO_MANY_NODES")]
