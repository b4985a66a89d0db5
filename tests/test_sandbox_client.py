"""SandboxClient, the orchestrator's way in: results come back as responses, RPC failures as
services.common.errors with their reasons and field violations."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format
from iceos.sandbox.v1 import sandbox_pb2

from services.common import errors
from services.common.principal import Role
from services.sandbox.client import SandboxClient
from tests.support.sandbox import EXAMPLES, limits


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_execute_python_and_wasm(stack, tenant) -> None:  # type: ignore[no-untyped-def]
    async def provider() -> list[tuple[str, str]]:
        return tenant.md(Role.EDITOR)

    async def go() -> tuple[sandbox_pb2.ExecuteResponse, sandbox_pb2.ExecuteResponse]:
        async with SandboxClient(stack.address("sandbox"), provider) as client:
            python = await client.execute(
                tenant.project_id, language="python", inputs={"x": 21},
                source="import os\n\ndef main(inputs):\n"
                       "    return [inputs['x'] * 2, os.environ['ICEOS_IDEMPOTENCY_KEY']]\n",
                idempotency_key="run-1/node-a/1", limits=limits(timeout_s=10))
            wasm = await client.execute(tenant.parent, language=sandbox_pb2.LANGUAGE_WASM,
                                        wasm_module=(EXAMPLES / "echo.wat").read_bytes(),
                                        inputs=[1, 2])
            return python, wasm

    python, wasm = run(go())
    assert python.status == sandbox_pb2.EXECUTION_STATUS_OK, python.error
    assert json_format.MessageToDict(python.result) == [42, "run-1/node-a/1"]
    assert json_format.MessageToDict(wasm.result) == {"echo": [1, 2]}


def test_failures_become_domain_errors(stack, tenant, other_tenant) -> None:  # type: ignore[no-untyped-def]
    address = stack.address("sandbox")

    async def call(metadata, **kwargs):  # type: ignore[no-untyped-def]
        async with SandboxClient(address, lambda: metadata) as client:
            kwargs.setdefault("language", "python")
            kwargs.setdefault("source", "def main(i):\n    return 1\n")
            return await client.execute(tenant.project_id, **kwargs)

    with pytest.raises(errors.InvalidArgument) as bad:
        run(call(tenant.md(), limits=limits(memory_mb=-1)))
    assert [v.field for v in bad.value.violations] == ["limits.memory_mb"]
    assert bad.value.violations[0].reason == "LIMIT_NEGATIVE"
    with pytest.raises(errors.InvalidArgument) as empty:
        run(call(tenant.md(), source=""))
    assert empty.value.violations[0].field == "source"
    with pytest.raises(errors.PermissionDenied):
        run(call(tenant.md(Role.VIEWER)))
    with pytest.raises(errors.NotFound):
        run(call(other_tenant.md(Role.ADMIN)))
    with pytest.raises(errors.Unauthenticated):
        run(call([("authorization", "Bearer not-a-token")]))
    with pytest.raises(errors.InvalidArgument):
        run(call(tenant.md(), language="cobol"))


def test_an_unreachable_sandbox_is_unavailable() -> None:
    from services.stack.embedded import free_port

    async def go() -> None:
        async with SandboxClient(f"127.0.0.1:{free_port()}") as client:
            await client.execute("p", language="python", source="def main(i): pass",
                                 timeout=5)

    with pytest.raises((errors.Unavailable, errors.DeadlineExceeded)):
        run(go())
