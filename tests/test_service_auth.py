"""Service tokens: the orchestrator acts for one project when it calls another service."""

from __future__ import annotations

import grpc
import pytest
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common import service_auth
from tests.support.stack import SERVICE_KEY


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_service_token_acts_as_an_editor_of_one_project(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    token = service_auth.mint(SERVICE_KEY, project_id=tenant.project_id,
                              organization_id=tenant.organization_id, service="orchestrator")
    with stack.channel("registry") as channel:
        who = auth_pb2_grpc.AuthServiceStub(channel).GetCurrentPrincipal(
            auth_pb2.GetCurrentPrincipalRequest(), metadata=_md(token))
    assert who.project == tenant.parent and who.role == 2  # ROLE_EDITOR
    with stack.channel("orchestrator") as channel:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        stub.CreateMemory(memory_pb2.CreateMemoryRequest(
            parent=tenant.parent, memory=memory_pb2.Memory(content="by a service")),
            metadata=_md(token))
        with pytest.raises(grpc.RpcError) as info:
            stub.SearchMemories(memory_pb2.SearchMemoriesRequest(
                parent=other_tenant.parent, query="x"), metadata=_md(token))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("key, ttl", [(b"not-the-key", 300), (SERVICE_KEY, -5)])
def test_forged_or_expired_service_tokens_are_refused(stack, tenant, key, ttl) -> None:  # type: ignore[no-untyped-def]
    token = service_auth.mint(key, project_id=tenant.project_id,
                              organization_id=tenant.organization_id, service="x", ttl_s=ttl)
    with stack.channel("registry") as channel:
        with pytest.raises(grpc.RpcError) as info:
            auth_pb2_grpc.AuthServiceStub(channel).GetCurrentPrincipal(
                auth_pb2.GetCurrentPrincipalRequest(), metadata=_md(token))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_tampered_payload_is_refused() -> None:
    token = service_auth.mint(SERVICE_KEY, project_id="a", organization_id="o", service="x")
    prefix, payload, signature = token.split(".")
    forged_payload = service_auth._b64(service_auth._unb64(payload).replace(b'"a"', b'"b"'))
    from services.common import errors
    with pytest.raises(errors.Unauthenticated):
        service_auth.verify(SERVICE_KEY, f"{prefix}.{forged_payload}.{signature}")
