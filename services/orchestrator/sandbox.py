"""The one place the orchestrator calls the sandbox service (Execute, through the shared
services/sandbox/client.py), authenticated with a service token for the run's project. No user
code ever runs in the orchestrator process."""

from __future__ import annotations

from typing import Any

from google.protobuf import duration_pb2
from iceos.sandbox.v1 import sandbox_pb2

from services.common import errors, service_auth
from services.sandbox.client import SandboxClient as _SandboxClient

_RETRYABLE = (errors.Unavailable, errors.ResourceExhausted, errors.DeadlineExceeded)


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
        self._client: _SandboxClient | None = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def execute(self, *, project_id: str, organization_id: str, inputs: Any,
                      idempotency_key: str, timeout_s: float, source: str | None = None,
                      wasm_module: bytes | None = None) -> sandbox_pb2.ExecuteResponse:
        if not self.service_key:
            raise SandboxUnavailable("the orchestrator has no ICEOS_SERVICE_KEY, so it cannot "
                                     "authenticate to the sandbox", retryable=False)
        if self._client is None:
            self._client = _SandboxClient(self.address)
        token = service_auth.mint(self.service_key, project_id=project_id,
                                  organization_id=organization_id, service="orchestrator")
        limits = sandbox_pb2.Limits(timeout=duration_pb2.Duration(
            seconds=int(timeout_s), nanos=int((timeout_s % 1) * 1e9)))
        try:
            return await self._client.execute(
                project_id, language="wasm" if wasm_module else "python", source=source,
                wasm_module=wasm_module, inputs=inputs, limits=limits,
                idempotency_key=idempotency_key,
                metadata=[("authorization", f"Bearer {token}")])
        except errors.IceError as exc:
            raise SandboxUnavailable(f"the sandbox refused the call ({exc.reason}): "
                                     f"{exc.message}",
                                     retryable=isinstance(exc, _RETRYABLE)) from None
