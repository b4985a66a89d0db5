"""The one place the orchestrator calls the sandbox service (Execute), authenticated with a
service token for the run's project. No user code ever runs in the orchestrator process."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import duration_pb2, struct_pb2
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common import service_auth


class SandboxUnavailable(Exception):
    """The sandbox could not be reached or refused the request; `retryable` says if trying again
    may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class SandboxClient:
    def __init__(self, address: str, service_key: bytes | None) -> None:
        self.address = address
        self.service_key = service_key
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> sandbox_pb2_grpc.SandboxServiceStub:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return sandbox_pb2_grpc.SandboxServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def execute(self, *, project_id: str, organization_id: str, inputs: Any,
                      idempotency_key: str, timeout_s: float, source: str | None = None,
                      wasm_module: bytes | None = None) -> sandbox_pb2.ExecuteResponse:
        if not self.service_key:
            raise SandboxUnavailable("the orchestrator has no ICEOS_SERVICE_KEY, so it cannot "
                                     "authenticate to the sandbox", retryable=False)
        token = service_auth.mint(self.service_key, project_id=project_id,
                                  organization_id=organization_id, service="orchestrator")
        value = struct_pb2.Value()
        from google.protobuf import json_format
        json_format.ParseDict(inputs, value)
        request = sandbox_pb2.ExecuteRequest(
            parent=f"projects/{project_id}", inputs=value, idempotency_key=idempotency_key,
            language=sandbox_pb2.LANGUAGE_WASM if wasm_module else sandbox_pb2.LANGUAGE_PYTHON,
            limits=sandbox_pb2.Limits(timeout=duration_pb2.Duration(
                seconds=int(timeout_s), nanos=int((timeout_s % 1) * 1e9))))
        if wasm_module:
            request.wasm_module = wasm_module
        else:
            request.source = source or ""
        try:
            return await self._stub().Execute(
                request, metadata=[("authorization", f"Bearer {token}")],
                timeout=timeout_s + 10)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            retryable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                 grpc.StatusCode.RESOURCE_EXHAUSTED)
            raise SandboxUnavailable(f"the sandbox answered {code.name}: {exc.details()}",
                                     retryable=retryable) from None
