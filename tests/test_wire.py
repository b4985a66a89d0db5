"""Requests protobuf cannot parse are INVALID_ARGUMENT naming the bad field, on every service
(the interceptor parses after authentication and asks services.common.wire which field)."""

from __future__ import annotations

import grpc
import pytest
from iceos.memory.v1 import memory_pb2
from iceos.sandbox.v1 import sandbox_pb2

from tests.support.errors import violations


@pytest.mark.parametrize("service, method, request_message, needle, field", [
    ("sandbox", "/iceos.sandbox.v1.SandboxService/Execute",
     sandbox_pb2.ExecuteRequest(language=sandbox_pb2.LANGUAGE_PYTHON,
                                source="def main(i): return 'marker'"), b"marker", "source"),
    ("orchestrator", "/iceos.memory.v1.MemoryService/CreateMemory",
     memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="marker")), b"marker",
     "memory.content"),
])
def test_invalid_utf8_names_the_field(stack, tenant, service, method, request_message, needle,
                                      field) -> None:  # type: ignore[no-untyped-def]
    request_message.parent = tenant.parent
    raw = request_message.SerializeToString().replace(needle, b"mar\xffer", 1)
    with stack.channel(service) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            call(raw, metadata=tenant.md(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(info.value) == [(field, "INVALID_UTF8")]
