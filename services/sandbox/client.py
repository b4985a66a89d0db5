"""An async client of SandboxService for the other services (the orchestrator's code nodes and
Python/WASM tools). RPC failures come back as services.common.errors, so callers handle them
like any domain error; a failure of the code itself is a response with a status, not an error.

    client = SandboxClient(settings.sandbox_address, metadata_provider=credentials)
    response = await client.execute("my-project", language="python",
                                    source="def main(inputs):\\n    return inputs['x'] * 2\\n",
                                    inputs={"x": 21}, idempotency_key="run-1/node-a/1")
    response.status == sandbox_pb2.EXECUTION_STATUS_OK; json_format.MessageToDict(response.result)
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Union

import grpc
from google.protobuf import json_format, struct_pb2
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common import errors
from services.common.grpc_errors import from_rpc_error
from services.common.settings import MAX_MESSAGE_BYTES

Metadata = Iterable[tuple[str, str]]
MetadataProvider = Callable[[], Union[Metadata, Awaitable[Metadata]]]

# Waiting for a free slot and the round trip, beyond the execution's own wall-clock limit.
DEADLINE_MARGIN_S = 15.0
# The server's default wall-clock limit, for requests that do not set one.
DEFAULT_TIMEOUT_S = 30.0

_LANGUAGES = {"python": sandbox_pb2.LANGUAGE_PYTHON, "wasm": sandbox_pb2.LANGUAGE_WASM}


def _language(value: Any) -> int:
    if isinstance(value, str):
        key = value.lower().removeprefix("language_")
        if key in _LANGUAGES:
            return _LANGUAGES[key]
        raise errors.InvalidArgument.field("language", f"unknown language {value!r}")
    if hasattr(value, "value") and isinstance(value.value, str):  # outcome.Language
        return _language(value.value)
    return int(value)


class SandboxClient:
    def __init__(self, address: str, metadata_provider: MetadataProvider | None = None, *,
                 channel: grpc.aio.Channel | None = None) -> None:
        self.address = address
        self._metadata_provider = metadata_provider
        self._channel = channel or grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self._stub = sandbox_pb2_grpc.SandboxServiceStub(self._channel)

    async def __aenter__(self) -> "SandboxClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _metadata(self) -> list[tuple[str, str]]:
        if self._metadata_provider is None:
            return []
        provided = self._metadata_provider()
        if inspect.isawaitable(provided):
            provided = await provided
        return list(provided)

    async def execute(self, project_id: str, *, language: Any, source: str | None = None,
                      wasm_module: bytes | None = None, inputs: Any = None,
                      limits: sandbox_pb2.Limits | None = None, idempotency_key: str = "",
                      metadata: Metadata = (), timeout: float | None = None
                      ) -> sandbox_pb2.ExecuteResponse:
        """Run code once in `project_id` (an id or `projects/<id>`). Raises
        services.common.errors.* when the call fails (InvalidArgument, ResourceExhausted, …)."""
        parent = project_id if project_id.startswith("projects/") else f"projects/{project_id}"
        request = sandbox_pb2.ExecuteRequest(
            parent=parent, language=_language(language), source=source or "",
            wasm_module=wasm_module or b"", idempotency_key=idempotency_key)
        if inputs is not None:
            value = struct_pb2.Value()
            try:
                json_format.ParseDict(inputs, value)
            except (json_format.ParseError, TypeError, ValueError) as exc:
                raise errors.InvalidArgument.field("inputs", f"is not JSON: {exc}") from None
            request.inputs.CopyFrom(value)
        if limits is not None:
            request.limits.CopyFrom(limits)
        if timeout is None:
            wall = DEFAULT_TIMEOUT_S
            if limits is not None and limits.HasField("timeout"):
                wall = limits.timeout.ToNanoseconds() / 1e9 or DEFAULT_TIMEOUT_S
            timeout = wall + DEADLINE_MARGIN_S
        call_metadata = await self._metadata() + list(metadata)
        try:
            return await self._stub.Execute(request, metadata=call_metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
