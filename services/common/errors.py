"""Domain errors. Domain code raises these; the error interceptor (services.common.grpc_errors)
is the one place that turns them into gRPC status codes with rich details."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is a path such as `blueprint.nodes[2].depends_on[0]`."""

    field: str
    description: str
    reason: str = ""


class IceError(Exception):
    """Base of every error a caller may see. `reason` is UPPER_SNAKE and stable."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.metadata = metadata or {}


class InvalidArgument(IceError):
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None, *,
                 reason: str | None = None, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, path: str, description: str, reason: str = "") -> "InvalidArgument":
        return cls(f"{path}: {description}", [FieldViolation(path, description, reason)])


class NotFound(IceError):
    reason = "NOT_FOUND"


class AlreadyExists(IceError):
    reason = "ALREADY_EXISTS"


class Aborted(IceError):
    """Optimistic concurrency lost: a stale etag or a concurrent change."""

    reason = "ETAG_MISMATCH"


class FailedPrecondition(IceError):
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(IceError):
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(IceError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(IceError):
    reason = "PERMISSION_DENIED"


class Unavailable(IceError):
    reason = "UNAVAILABLE"


class DeadlineExceeded(IceError):
    reason = "DEADLINE_EXCEEDED"


@dataclass
class Violations:
    """Collects field violations so validators can report every problem, not the first."""

    items: list[FieldViolation] = field(default_factory=list)

    def add(self, path: str, description: str, reason: str = "") -> None:
        self.items.append(FieldViolation(path, description, reason))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, message: str = "the request has invalid fields") -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items[:3])
            more = f" (and {len(self.items) - 3} more)" if len(self.items) > 3 else ""
            raise InvalidArgument(f"{message}: {summary}{more}", self.items)
