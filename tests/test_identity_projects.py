"""Organizations and projects on the real registry: organization admins create projects; each
token sees its own organization and the projects it reaches, and nothing of other tenants. And the
audit log: every write, who, what, when and outcome, denied ones included."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import grpc
import psycopg
import pytest
from iceos.auth.v1 import access_pb2, auth_pb2, auth_pb2_grpc

from services.common.principal import Role
from services.registry.identity import store as identity_store
from tests.conftest import db_execute
from tests.support.processes import wait_for
from tests.support.stack import LiveStack, Tenant


@pytest.fixture
def auth(stack: LiveStack) -> Iterator[auth_pb2_grpc.AuthServiceStub]:
    with stack.channel("registry") as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


def organization_token(database_url: str, organization_id: str,
                       role: Role = Role.ADMIN) -> list[tuple[str, str]]:
    """gRPC metadata of a new organization-wide token."""
    async def mint() -> str:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            conn.row_factory = psycopg.rows.dict_row
            _, secret = await identity_store.insert_token(
                conn, organization_id=organization_id, project_id=None, role=role,
                display_name=f"org {role.label}", creator="tests")
            return secret
    return [("authorization", f"Bearer {asyncio.run(mint())}")]


def _code(call, request, metadata) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=metadata)
    return info.value.code()


def test_organization_admin_creates_and_lists_projects(auth, stack: LiveStack,  # type: ignore[no-untyped-def]
                                                       tenant: Tenant) -> None:
    org_admin = organization_token(stack.database_url, tenant.organization_id)
    new_id = f"p-{uuid.uuid4().hex[:10]}"
    created = auth.CreateProject(auth_pb2.CreateProjectRequest(
        project_id=new_id, project=auth_pb2.Project(display_name="New"), request_id="r1"),
        metadata=org_admin)
    assert created.name == f"projects/{new_id}"
    assert created.organization == f"organizations/{tenant.organization_id}"
    # The same request_id returns the same project; another id with it is refused.
    again = auth.CreateProject(auth_pb2.CreateProjectRequest(
        project_id=new_id, project=auth_pb2.Project(display_name="New"), request_id="r1"),
        metadata=org_admin)
    assert again == created
    assert _code(auth.CreateProject, auth_pb2.CreateProjectRequest(
        project_id=new_id), org_admin) == grpc.StatusCode.ALREADY_EXISTS
    assert _code(auth.CreateProject, auth_pb2.CreateProjectRequest(
        project_id="Bad_Id"), org_admin) == grpc.StatusCode.INVALID_ARGUMENT

    listed = auth.ListProjects(auth_pb2.ListProjectsRequest(page_size=1), metadata=org_admin)
    names = [p.name for p in listed.projects]
    while listed.next_page_token:
        listed = auth.ListProjects(auth_pb2.ListProjectsRequest(
            page_size=1, page_token=listed.next_page_token), metadata=org_admin)
        names += [p.name for p in listed.projects]
    assert sorted(names) == sorted([tenant.parent, created.name])
    # The organization admin reaches the new project; the project admin of another project
    # does not, and creating projects needs an organization-wide token.
    assert auth.GetProject(auth_pb2.GetProjectRequest(name=created.name),
                           metadata=org_admin).display_name == "New"
    assert _code(auth.GetProject, auth_pb2.GetProjectRequest(name=created.name),
                 tenant.md(Role.ADMIN)) == grpc.StatusCode.NOT_FOUND
    assert _code(auth.CreateProject, auth_pb2.CreateProjectRequest(project_id="p-x"),
                 tenant.md(Role.ADMIN)) == grpc.StatusCode.PERMISSION_DENIED
    org_viewer = organization_token(stack.database_url, tenant.organization_id, Role.VIEWER)
    assert _code(auth.CreateProject, auth_pb2.CreateProjectRequest(project_id="p-y"),
                 org_viewer) == grpc.StatusCode.PERMISSION_DENIED
    # An organization admin mints tokens in any of its projects.
    token = auth.CreateToken(auth_pb2.CreateTokenRequest(
        parent=created.name, token=auth_pb2.Token(role=access_pb2.ROLE_ADMIN)),
        metadata=org_admin)
    assert token.name.startswith(created.name + "/tokens/")


def test_a_project_token_sees_only_its_project_and_organization(auth, tenant: Tenant,  # type: ignore[no-untyped-def]
                                                                other_tenant: Tenant) -> None:
    md = tenant.md(Role.VIEWER)
    listed = auth.ListProjects(auth_pb2.ListProjectsRequest(), metadata=md)
    assert [p.name for p in listed.projects] == [tenant.parent]
    assert auth.GetProject(auth_pb2.GetProjectRequest(name=tenant.parent),
                           metadata=md).name == tenant.parent
    org = auth.GetOrganization(auth_pb2.GetOrganizationRequest(
        name=f"organizations/{tenant.organization_id}"), metadata=md)
    assert org.name == f"organizations/{tenant.organization_id}"
    for call, request in (
            (auth.GetProject, auth_pb2.GetProjectRequest(name=other_tenant.parent)),
            (auth.GetProject, auth_pb2.GetProjectRequest(name="projects/does-not-exist")),
            (auth.GetOrganization, auth_pb2.GetOrganizationRequest(
                name=f"organizations/{other_tenant.organization_id}"))):
        assert _code(call, request, md) == grpc.StatusCode.NOT_FOUND


def test_every_write_is_audited_with_who_what_when_and_outcome(auth, stack: LiveStack,  # type: ignore[no-untyped-def]
                                                               tenant: Tenant) -> None:
    ok = auth.CreateToken(auth_pb2.CreateTokenRequest(
        parent=tenant.parent, token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER)),
        metadata=tenant.md(Role.ADMIN) + [("x-request-id", "audit-ok")])
    with pytest.raises(grpc.RpcError):
        auth.CreateToken(auth_pb2.CreateTokenRequest(
            parent=tenant.parent, token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER)),
            metadata=tenant.md(Role.VIEWER) + [("x-request-id", "audit-denied")])
    auth.RevokeToken(auth_pb2.RevokeTokenRequest(name=ok.name),
                     metadata=tenant.md(Role.ADMIN) + [("x-request-id", "audit-revoke")])
    # Reads are not writes.
    auth.ListTokens(auth_pb2.ListTokensRequest(parent=tenant.parent),
                    metadata=tenant.md(Role.ADMIN) + [("x-request-id", "audit-read")])
    # A call without a valid token has no "who": it is refused before anything happens.
    with pytest.raises(grpc.RpcError):
        auth.RevokeToken(auth_pb2.RevokeTokenRequest(name=ok.name),
                         metadata=[("x-request-id", "audit-anonymous")])

    # Audit rows are written just after each response is sent.
    rows = wait_for(lambda: (lambda found: found if len(found) >= 3 else None)(db_execute(
        stack.database_url, "SELECT * FROM audit_log WHERE project_id = %s ORDER BY id",
        (tenant.project_id,))), 10, what="three audit rows")
    by_request = {r["request_id"]: r for r in rows}
    assert set(by_request) == {"audit-ok", "audit-denied", "audit-revoke"}
    first = by_request["audit-ok"]
    assert first["method"] == "/iceos.auth.v1.AuthService/CreateToken"
    assert first["outcome"] == "OK" and first["resource"] == tenant.parent
    assert first["details"] == {"result": ok.name}
    assert first["actor"].startswith(f"{tenant.parent}/tokens/")
    assert first["organization_id"] == tenant.organization_id and first["time"] is not None
    assert by_request["audit-denied"]["outcome"] == "PERMISSION_DENIED"
    assert by_request["audit-denied"]["actor"] != first["actor"]
    assert by_request["audit-revoke"]["method"].endswith("/RevokeToken")
    assert by_request["audit-revoke"]["resource"] == ok.name
    # No secret ever lands in the audit log.
    assert ok.secret not in str(rows)
