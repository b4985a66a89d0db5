"""MemoryService (hosted by the orchestrator) through the edge and directly: semantic search with
pgvector, idempotent create, roles and tenant isolation."""

from __future__ import annotations

import grpc
import pytest
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common.principal import Role


def _stub(channel: grpc.Channel) -> memory_pb2_grpc.MemoryServiceStub:
    return memory_pb2_grpc.MemoryServiceStub(channel)


def test_create_search_get_delete(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        stub = _stub(channel)
        texts = ["the invoice from ACME is due on Friday",
                 "our cat likes to sleep in the sun",
                 "deploy the web server with docker compose"]
        created = [stub.CreateMemory(memory_pb2.CreateMemoryRequest(
            parent=tenant.parent, memory=memory_pb2.Memory(content=t)), metadata=tenant.md())
            for t in texts]
        found = stub.SearchMemories(memory_pb2.SearchMemoriesRequest(
            parent=tenant.parent, query="when is the ACME invoice due?", page_size=3),
            metadata=tenant.md(Role.VIEWER))
        assert found.matches[0].memory.name == created[0].name
        assert len(found.matches) == 3
        assert found.matches[0].score > found.matches[1].score
        got = stub.GetMemory(memory_pb2.GetMemoryRequest(name=created[1].name),
                             metadata=tenant.md(Role.VIEWER))
        assert got.content == texts[1]
        stub.DeleteMemory(memory_pb2.DeleteMemoryRequest(name=created[1].name),
                          metadata=tenant.md())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetMemory(memory_pb2.GetMemoryRequest(name=created[1].name),
                           metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_request_id_makes_create_idempotent(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel("orchestrator") as channel:
        request = memory_pb2.CreateMemoryRequest(
            parent=tenant.parent, memory=memory_pb2.Memory(content="once"), request_id="r-1")
        first = _stub(channel).CreateMemory(request, metadata=tenant.md())
        second = _stub(channel).CreateMemory(request, metadata=tenant.md())
        assert first.name == second.name


def test_viewer_cannot_write_and_others_cannot_read(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        stub = _stub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateMemory(memory_pb2.CreateMemoryRequest(
                parent=tenant.parent, memory=memory_pb2.Memory(content="x")),
                metadata=tenant.md(Role.VIEWER))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = stub.CreateMemory(memory_pb2.CreateMemoryRequest(
            parent=tenant.parent, memory=memory_pb2.Memory(content="private")),
            metadata=tenant.md())
        with pytest.raises(grpc.RpcError) as info:
            stub.GetMemory(memory_pb2.GetMemoryRequest(name=mine.name),
                           metadata=other_tenant.md(Role.ADMIN))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        result = stub.SearchMemories(memory_pb2.SearchMemoriesRequest(
            parent=other_tenant.parent, query="private"), metadata=other_tenant.md())
        assert list(result.matches) == []


@pytest.mark.parametrize("memory, field", [
    (memory_pb2.Memory(content="   "), "memory.content"),
    (memory_pb2.Memory(content="x" * 70000), "memory.content"),
])
def test_bad_memories_are_invalid_argument(stack, tenant, memory, field) -> None:  # type: ignore[no-untyped-def]
    with stack.channel() as channel:
        with pytest.raises(grpc.RpcError) as info:
            _stub(channel).CreateMemory(memory_pb2.CreateMemoryRequest(
                parent=tenant.parent, memory=memory), metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in info.value.details()


def test_json_through_the_edge(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    import json
    import urllib.request
    body = json.dumps({"content": "hello from curl", "metadata": {"source": "test"}}).encode()
    request = urllib.request.Request(f"{stack.edge.url}/v1/{tenant.parent}/memories",
                                     data=body, method="POST",
                                     headers={**tenant.headers(),
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.loads(response.read())
    assert created["content"] == "hello from curl"
    assert created["metadata"] == {"source": "test"}
    assert created["name"].startswith(f"{tenant.parent}/memories/")
