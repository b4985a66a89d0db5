"""Reading the rich error details (google.rpc.ErrorInfo / BadRequest) of a failed gRPC call:
one home for the tests, so they assert on reasons and field paths rather than on messages."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def field_violations(error: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """Every BadRequest field violation of a failed call, in the order the service gave them."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[error_details_pb2.BadRequest.FieldViolation] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += bad.field_violations
    return found


def violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, reason) of each violation."""
    return [(v.field, v.reason) for v in field_violations(error)]


def violation_descriptions(error: grpc.RpcError) -> dict[str, str]:
    """field -> how to fix it."""
    return {v.field: v.description for v in field_violations(error)}


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(error: grpc.RpcError) -> str:
    """ErrorInfo.reason; for Envoy's own replies (no details) the x-iceos-reason trailer."""
    info = error_info(error)
    if info is not None:
        return info.reason
    return dict(error.trailing_metadata() or ()).get("x-iceos-reason", "")  # type: ignore[attr-defined]
