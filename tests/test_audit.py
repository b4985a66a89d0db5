"""The audit log records writes (any outcome) and only writes: POST methods that change nothing
(validate, search) say so in their access rule and are not recorded."""

from __future__ import annotations

from iceos.registry.v1 import registry_pb2

from services.common.principal import Role
from tests.conftest import db_execute
from tests.support.processes import wait_for
from tests.support.registry import hello, stub


def test_reads_with_a_body_are_not_audited_writes_are(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        s = stub(channel)
        s.ValidateBlueprint(registry_pb2.ValidateBlueprintRequest(
            parent=tenant.parent, blueprint=hello()),
            metadata=tenant.md(Role.VIEWER) + [("x-request-id", "a-validate")])
        s.SearchComponents(registry_pb2.SearchComponentsRequest(
            parent=tenant.parent, query="fetch a web page"),
            metadata=tenant.md(Role.VIEWER) + [("x-request-id", "a-search")])
        s.CreateBlueprint(registry_pb2.CreateBlueprintRequest(
            parent=tenant.parent, blueprint_id="audited", blueprint=hello()),
            metadata=tenant.md() + [("x-request-id", "a-create")])

    def rows() -> list[str] | None:
        found = [r["request_id"] for r in db_execute(
            stack.database_url, "SELECT request_id FROM audit_log WHERE project_id = %s",
            (tenant.project_id,))]
        return found if "a-create" in found else None

    assert wait_for(rows, 10, what="the create's audit row") == ["a-create"]
