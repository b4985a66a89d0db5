"""The one place domain errors become gRPC statuses (google.rpc.Status with ErrorInfo and
BadRequest details). Internals never leak: unexpected exceptions become INTERNAL with only a
request id the operator can find in the logs."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import errors

DOMAIN = "iceos.dev"

_CODES: list[tuple[type[errors.IceError], grpc.StatusCode, int]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND, code_pb2.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, code_pb2.ALREADY_EXISTS),
    (errors.Aborted, grpc.StatusCode.ABORTED, code_pb2.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, code_pb2.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, code_pb2.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, code_pb2.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, code_pb2.PERMISSION_DENIED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
]


def _pack(message) -> any_pb2.Any:  # type: ignore[no-untyped-def]
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(exc: errors.IceError) -> grpc.Status:
    """The gRPC status for a domain error, details included."""
    for cls, _, numeric in _CODES:
        if isinstance(exc, cls):
            break
    else:
        numeric = code_pb2.UNKNOWN
    details = [_pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN,
                                                 metadata=exc.metadata))]
    if isinstance(exc, errors.InvalidArgument) and exc.violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=v.field, description=v.description, reason=v.reason)
            for v in exc.violations])))
    status = status_pb2.Status(code=numeric, message=exc.message, details=details)
    return rpc_status.to_status(status)


def internal_status(request_id: str) -> grpc.Status:
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error; quote request id {request_id} to the operator",
        details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN,
                                                   metadata={"request_id": request_id})),
                 _pack(error_details_pb2.RequestInfo(request_id=request_id))],
    )
    return rpc_status.to_status(status)


def unavailable_status(message: str) -> grpc.Status:
    return to_status(errors.Unavailable(message))


_ERRORS_BY_CODE = {code: cls for cls, code, _ in _CODES}


def from_rpc_error(exc: grpc.RpcError) -> errors.IceError:
    """The domain error for a failed call to another iceOS service: the inverse of to_status,
    keeping the reason, metadata and field violations. Codes without a domain error (INTERNAL,
    UNKNOWN, …) become a plain IceError with reason INTERNAL."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
    message = (exc.details() if hasattr(exc, "details") else None) or str(code)  # type: ignore[attr-defined]
    reason: str | None = None
    metadata: dict[str, str] = {}
    violations: list[errors.FieldViolation] = []
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None  # type: ignore[attr-defined]
    for key, value in trailing or ():
        if key != "grpc-status-details-bin":
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # noqa: BLE001 - malformed details: keep code and message
            break
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason or None, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                violations = [errors.FieldViolation(v.field, v.description, v.reason)
                              for v in bad.field_violations]
    cls = _ERRORS_BY_CODE.get(code)
    if cls is None:
        if code == grpc.StatusCode.CANCELLED:
            cls = errors.Unavailable
        else:
            return errors.IceError(message, reason=reason or "INTERNAL", metadata=metadata)
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(message, violations, reason=reason, metadata=metadata)
    return cls(message, reason=reason, metadata=metadata)
