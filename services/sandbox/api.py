"""SandboxService servicer: proto ⇄ domain, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2
from iceos.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

from services.common import errors, names

from .executor import Sandbox
from .limits import RequestedLimits
from .outcome import Job, Language, Outcome, Status

_LANGUAGES = {sandbox_pb2.LANGUAGE_PYTHON: Language.PYTHON,
              sandbox_pb2.LANGUAGE_WASM: Language.WASM}
_STATUSES = {
    Status.OK: sandbox_pb2.EXECUTION_STATUS_OK,
    Status.ERROR: sandbox_pb2.EXECUTION_STATUS_ERROR,
    Status.TIMEOUT: sandbox_pb2.EXECUTION_STATUS_TIMEOUT,
    Status.MEMORY_LIMIT: sandbox_pb2.EXECUTION_STATUS_MEMORY_LIMIT,
    Status.CPU_LIMIT: sandbox_pb2.EXECUTION_STATUS_CPU_LIMIT,
    Status.OUTPUT_LIMIT: sandbox_pb2.EXECUTION_STATUS_OUTPUT_LIMIT,
    Status.KILLED: sandbox_pb2.EXECUTION_STATUS_KILLED,
}
_SAFE_INTEGER = 2**53


def _plain(value: Any) -> Any:
    """google.protobuf.Value numbers are doubles; give `main` 3, not 3.0."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _SAFE_INTEGER:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def inputs_from_proto(request: sandbox_pb2.ExecuteRequest) -> Any:
    if not request.HasField("inputs"):
        return None
    try:
        return _plain(json_format.MessageToDict(request.inputs))
    except json_format.Error as exc:
        raise errors.InvalidArgument.field("inputs", f"is not JSON: {exc}") from None


def _seconds(value: duration_pb2.Duration) -> float:
    return value.seconds + value.nanos / 1e9


def limits_from_proto(limits: sandbox_pb2.Limits) -> RequestedLimits:
    return RequestedLimits(timeout_s=_seconds(limits.timeout), memory_mb=limits.memory_mb,
                           cpu_s=_seconds(limits.cpu_time),
                           max_output_bytes=limits.max_output_bytes, fuel=limits.fuel)


def job_from_proto(request: sandbox_pb2.ExecuteRequest, project_id: str) -> Job:
    language = _LANGUAGES.get(request.language)
    if language is None:
        raise errors.InvalidArgument.field(
            "language", "choose LANGUAGE_PYTHON or LANGUAGE_WASM", "LANGUAGE_REQUIRED")
    return Job(language=language, inputs=inputs_from_proto(request), source=request.source,
               wasm_module=request.wasm_module, idempotency_key=request.idempotency_key,
               project_id=project_id)


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


def outcome_to_proto(outcome: Outcome) -> sandbox_pb2.ExecuteResponse:
    response = sandbox_pb2.ExecuteResponse(
        status=_STATUSES[outcome.status], stdout=outcome.stdout, stderr=outcome.stderr,
        stdout_truncated=outcome.stdout_truncated, stderr_truncated=outcome.stderr_truncated,
        usage=sandbox_pb2.Usage(wall_time=_duration(outcome.usage.wall_s),
                                cpu_time=_duration(outcome.usage.cpu_s),
                                peak_memory_bytes=outcome.usage.peak_memory_bytes,
                                fuel_consumed=outcome.usage.fuel_consumed))
    if outcome.status is Status.OK:
        value = struct_pb2.Value()
        try:
            json_format.ParseDict(outcome.result, value)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            response.status = sandbox_pb2.EXECUTION_STATUS_ERROR
            response.error.CopyFrom(sandbox_pb2.ExecutionError(
                type="NonJSONResult", message=f"the result cannot be returned: {exc}"[:4000]))
            return response
        response.result.CopyFrom(value)
    if outcome.error is not None:
        response.error.CopyFrom(sandbox_pb2.ExecutionError(
            type=outcome.error.type, message=outcome.error.message,
            traceback=outcome.error.traceback, line=outcome.error.line))
    return response


class SandboxServicer(sandbox_pb2_grpc.SandboxServiceServicer):
    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def Execute(self, request: sandbox_pb2.ExecuteRequest,
                      context: grpc.aio.ServicerContext) -> sandbox_pb2.ExecuteResponse:
        project = names.project_of(request.parent)
        job = job_from_proto(request, project)
        outcome = await self.sandbox.execute(job, limits_from_proto(request.limits))
        return outcome_to_proto(outcome)
