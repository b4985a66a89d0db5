"""The interceptor chain on a real in-process grpc.aio server: domain errors become statuses
with rich details, unexpected errors never leak internals, undeclared methods are refused."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from iceos.auth.v1 import auth_pb2, auth_pb2_grpc
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common import errors
from services.common.auth import Authenticator
from services.common.db import Database
from services.common.interceptors import ServiceInterceptor
from tests.support.errors import error_info, field_violations
from tests.support.stack import create_tenant


class Exploding(auth_pb2_grpc.AuthServiceServicer):
    async def GetCurrentPrincipal(self, request, context):  # type: ignore[no-untyped-def]
        raise RuntimeError("password=hunter2 at /srv/secret.py line 7")

    async def GetProject(self, request, context):  # type: ignore[no-untyped-def]
        raise errors.InvalidArgument("bad things", [
            errors.FieldViolation("blueprint.nodes[2].depends_on[0]", "unknown node 'x'")])


class Memory(memory_pb2_grpc.MemoryServiceServicer):
    async def GetMemory(self, request, context):  # type: ignore[no-untyped-def]
        raise errors.NotFound(f"{request.name} not found")


async def _with_server(database_url: str, check) -> None:  # type: ignore[no-untyped-def]
    db = Database(database_url)
    server = grpc.aio.server(interceptors=[ServiceInterceptor(Authenticator(db), db)])
    auth_pb2_grpc.add_AuthServiceServicer_to_server(Exploding(), server)
    memory_pb2_grpc.add_MemoryServiceServicer_to_server(Memory(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await check(channel)
    finally:
        await server.stop(0)
        await db.close()


def test_unexpected_errors_are_internal_without_internals(fresh_database: str) -> None:
    tenant = create_tenant(fresh_database)

    async def check(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await auth_pb2_grpc.AuthServiceStub(channel).GetCurrentPrincipal(
                auth_pb2.GetCurrentPrincipalRequest(), metadata=tenant.md())
        error = info.value
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "hunter2" not in error.details() and "secret.py" not in error.details()
        assert "Traceback" not in error.details()
        assert "quote request id" in error.details()

    asyncio.run(_with_server(fresh_database, check))


def test_invalid_argument_carries_field_violations_and_error_info(fresh_database: str) -> None:
    tenant = create_tenant(fresh_database)

    async def check(channel: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await auth_pb2_grpc.AuthServiceStub(channel).GetProject(
                auth_pb2.GetProjectRequest(name=tenant.parent), metadata=tenant.md())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        found = error_info(info.value)
        assert found is not None and found.domain == "iceos.dev"
        assert found.reason == "INVALID_ARGUMENT"
        assert [(v.field, v.description) for v in field_violations(info.value)] == \
            [("blueprint.nodes[2].depends_on[0]", "unknown node 'x'")]

    asyncio.run(_with_server(fresh_database, check))


def test_other_tenants_project_is_not_found_before_the_handler_runs(fresh_database: str) -> None:
    mine, theirs = create_tenant(fresh_database), create_tenant(fresh_database)

    async def check(channel: grpc.aio.Channel) -> None:
        stub = memory_pb2_grpc.MemoryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetMemory(memory_pb2.GetMemoryRequest(
                name=f"{theirs.parent}/memories/m1"), metadata=mine.md())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "project" in info.value.details()

    asyncio.run(_with_server(fresh_database, check))
