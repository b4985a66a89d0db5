"""The auth matrix, through the real Envoy edge (JSON and gRPC) and directly against each
service's own port (registry, orchestrator, sandbox): every bad credential is refused at the edge
with 401 (UNAUTHENTICATED for gRPC) and by every service itself; roles and tenant isolation hold
on both paths."""

from __future__ import annotations

import json

import grpc
import pytest
from iceos.auth.v1 import access_pb2, auth_pb2, auth_pb2_grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common.principal import Role
from tests.support.edge_client import bad_credentials, request
from tests.support.errors import error_reason
from tests.support.stack import LiveStack, Tenant

# One call per service, each needing a token: (service process, stub factory, method, request).
SERVICE_CALLS = {
    "registry": lambda ch, t: auth_pb2_grpc.AuthServiceStub(ch).GetCurrentPrincipal,
    "orchestrator": lambda ch, t: memory_pb2_grpc.MemoryServiceStub(ch).GetMemory,
    "sandbox": lambda ch, t: sandbox_pb2_grpc.SandboxServiceStub(ch).Execute,
}


def _request_for(service: str, tenant: Tenant):  # type: ignore[no-untyped-def]
    return {"registry": auth_pb2.GetCurrentPrincipalRequest(),
            "orchestrator": memory_pb2.GetMemoryRequest(name=f"{tenant.parent}/memories/m1"),
            "sandbox": sandbox_pb2.ExecuteRequest(parent=tenant.parent)}[service]


def _rpc_error(call, req, metadata) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(req, metadata=metadata, timeout=30)
    return info.value


@pytest.fixture
def bad(stack: LiveStack, tenant: Tenant) -> dict[str, tuple[str | None, str]]:
    return bad_credentials(stack.database_url, tenant.organization_id, tenant.project_id)


def test_every_bad_credential_gets_401_json_at_the_edge(stack: LiveStack, bad) -> None:  # type: ignore[no-untyped-def]
    assert stack.edge is not None
    for case, (authorization, reason) in bad.items():
        headers = {"Authorization": authorization} if authorization else {}
        reply = request(stack.edge.address, "GET", "/v1/principal", headers=headers)
        assert reply.status == 401, case
        body = reply.json()
        assert body["code"] == 16, case
        assert body["details"][0]["reason"] == reason, case
        assert body["details"][0]["domain"] == "iceos.dev"
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert reply.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("target", ["edge", "registry", "orchestrator", "sandbox"])
def test_every_bad_credential_is_unauthenticated_over_grpc(stack: LiveStack, tenant: Tenant,  # type: ignore[no-untyped-def]
                                                           bad, target: str) -> None:
    services = ["registry", "orchestrator", "sandbox"] if target == "edge" else [target]
    with stack.channel(None if target == "edge" else target) as channel:
        for service in services:
            call = SERVICE_CALLS[service](channel, tenant)
            for case, (authorization, reason) in bad.items():
                metadata = [("authorization", authorization)] if authorization else []
                error = _rpc_error(call, _request_for(service, tenant), metadata)
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (target, service, case)
                assert error_reason(error) == reason, (target, service, case)
                assert "Traceback" not in (error.details() or "")


@pytest.mark.parametrize("target", ["edge", "direct"])
def test_roles_and_tenants_hold_over_grpc(stack: LiveStack, tenant: Tenant,  # type: ignore[no-untyped-def]
                                          other_tenant: Tenant, target: str) -> None:
    def channel(service: str) -> grpc.Channel:
        return stack.channel(None if target == "edge" else service)

    create = memory_pb2.CreateMemoryRequest(parent=tenant.parent,
                                            memory=memory_pb2.Memory(content="a note"))
    mint = auth_pb2.CreateTokenRequest(parent=tenant.parent,
                                       token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER))
    with channel("orchestrator") as ch:
        memories = memory_pb2_grpc.MemoryServiceStub(ch)
        # A viewer writing.
        assert _rpc_error(memories.CreateMemory, create, tenant.md(Role.VIEWER)).code() == \
            grpc.StatusCode.PERMISSION_DENIED
        # A token of project A naming project B's resources.
        made = memories.CreateMemory(memory_pb2.CreateMemoryRequest(
            parent=other_tenant.parent, memory=memory_pb2.Memory(content="theirs")),
            metadata=other_tenant.md(Role.EDITOR))
        for req in (memory_pb2.GetMemoryRequest(name=made.name),
                    memory_pb2.CreateMemoryRequest(parent=other_tenant.parent,
                                                   memory=memory_pb2.Memory(content="x"))):
            call = memories.GetMemory if isinstance(req, memory_pb2.GetMemoryRequest) \
                else memories.CreateMemory
            error = _rpc_error(call, req, tenant.md(Role.ADMIN))
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert other_tenant.project_id in error.details()  # names only what was asked
        # An editor writes in its own project.
        assert memories.CreateMemory(create, metadata=tenant.md(Role.EDITOR)).name
    with channel("sandbox") as ch:
        execute = sandbox_pb2_grpc.SandboxServiceStub(ch).Execute
        assert _rpc_error(execute, sandbox_pb2.ExecuteRequest(parent=tenant.parent),
                          tenant.md(Role.VIEWER)).code() == grpc.StatusCode.PERMISSION_DENIED
        assert _rpc_error(execute, sandbox_pb2.ExecuteRequest(parent=other_tenant.parent),
                          tenant.md(Role.EDITOR)).code() == grpc.StatusCode.NOT_FOUND
    with channel("registry") as ch:
        tokens = auth_pb2_grpc.AuthServiceStub(ch)
        # An editor minting tokens; an admin minting a role above its own.
        assert _rpc_error(tokens.CreateToken, mint, tenant.md(Role.EDITOR)).code() == \
            grpc.StatusCode.PERMISSION_DENIED
        above = auth_pb2.CreateTokenRequest(parent=tenant.parent, token=auth_pb2.Token(role=4))
        assert _rpc_error(tokens.CreateToken, above, tenant.md(Role.ADMIN)).code() == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert _rpc_error(tokens.CreateToken, auth_pb2.CreateTokenRequest(
            parent=other_tenant.parent, token=auth_pb2.Token(role=access_pb2.ROLE_VIEWER)),
            tenant.md(Role.ADMIN)).code() == grpc.StatusCode.NOT_FOUND


def test_roles_and_tenants_hold_over_json(stack: LiveStack, tenant: Tenant,  # type: ignore[no-untyped-def]
                                          other_tenant: Tenant) -> None:
    assert stack.edge is not None
    edge = stack.edge.address

    def post(path: str, role: Role, body: dict, who: Tenant = tenant):  # type: ignore[no-untyped-def,type-arg]
        return request(edge, "POST", path, body=json.dumps(body).encode(),
                       headers={**who.headers(role), "Content-Type": "application/json"})

    memories = f"/v1/{tenant.parent}/memories"
    denied = post(memories, Role.VIEWER, {"content": "x"})
    assert denied.status == 403 and denied.json()["code"] == 7
    assert denied.json()["details"][0]["reason"] == "ROLE_TOO_LOW"
    assert post(memories, Role.EDITOR, {"content": "x"}).status == 200
    assert post(f"/v1/{tenant.parent}/tokens", Role.EDITOR, {"role": "ROLE_VIEWER"}).status == 403
    too_high = post(f"/v1/{tenant.parent}/tokens", Role.ADMIN, {"role": 4})
    assert too_high.status == 400
    violations = [d for d in too_high.json()["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == "token.role"
    minted = post(f"/v1/{tenant.parent}/tokens", Role.ADMIN, {"role": "ROLE_VIEWER"})
    assert minted.status == 200 and minted.json()["secret"].startswith("ice_")
    theirs = post(f"/v1/{other_tenant.parent}/memories", Role.ADMIN, {"content": "x"})
    assert theirs.status == 404 and theirs.json()["details"][0]["reason"] == "PROJECT_NOT_FOUND"
    # The bootstrap-style check of the issue: a valid token reads its principal.
    who = request(edge, "GET", "/v1/principal", headers=tenant.headers(Role.VIEWER))
    assert who.status == 200 and who.json()["project"] == tenant.parent
    assert who.json()["role"] == "ROLE_VIEWER"


DECLARED = {  # a method each service declares, with an editor rule
    "registry": "/iceos.auth.v1.AuthService/GetCurrentPrincipal",
    "orchestrator": "/iceos.memory.v1.MemoryService/CreateMemory",
    "sandbox": "/iceos.sandbox.v1.SandboxService/Execute",
}


@pytest.mark.parametrize("service", ["registry", "orchestrator", "sandbox"])
def test_bad_requests_directly_at_each_service_port(stack: LiveStack, tenant: Tenant,  # type: ignore[no-untyped-def]
                                                    service: str) -> None:
    """The gRPC forms of the HTTP bad inputs, on the service's own port: bytes that are not
    the declared message, a 26 MiB message, a method that does not exist here."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(stack.address(service), options=options) as channel:
        declared = channel.unary_unary(DECLARED[service])
        # Not a protobuf message: refused as bad input once the caller is known, and never
        # before it is (an anonymous caller learns nothing).
        garbage = b"\xff\xff\xff\xff\x0f"
        assert _rpc_error(declared, garbage, tenant.md(Role.ADMIN)).code() == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert _rpc_error(declared, garbage, []).code() == grpc.StatusCode.UNAUTHENTICATED
        # Over the 25 MiB message limit.
        huge = _rpc_error(declared, b"\n" + b"x" * (26 * 1024 * 1024), tenant.md(Role.ADMIN))
        assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Unknown methods: UNAUTHENTICATED without a token, UNIMPLEMENTED with one.
        unknown = channel.unary_unary("/iceos.nothing.v1.Nothing/Call")
        assert _rpc_error(unknown, b"", []).code() == grpc.StatusCode.UNAUTHENTICATED
        assert _rpc_error(unknown, b"", tenant.md(Role.ADMIN)).code() == \
            grpc.StatusCode.UNIMPLEMENTED
