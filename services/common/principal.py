"""Who is calling, and what they may touch. Domain code reads the principal of the current RPC
with `current()`; project access checks answer NOT_FOUND for other tenants' names so names do not
leak."""

from __future__ import annotations

import contextvars
import enum
from dataclasses import dataclass
from datetime import datetime

from . import errors


class Role(enum.IntEnum):
    """Ordered: each role includes everything below it (values match iceos.auth.v1.Role)."""

    VIEWER = 1
    EDITOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> "Role":
        return cls[name.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    token_id: str
    organization_id: str
    # None for an organization-wide token.
    project_id: str | None
    role: Role
    display_name: str = ""
    expire_time: datetime | None = None

    @property
    def token_name(self) -> str:
        if self.project_id:
            return f"projects/{self.project_id}/tokens/{self.token_id}"
        return f"organizations/{self.organization_id}/tokens/{self.token_id}"

    @property
    def organization_wide(self) -> bool:
        return self.project_id is None

    def require(self, role: Role) -> None:
        if self.role < role:
            raise errors.PermissionDenied(
                f"this call needs the {role.label} role; the token has {self.role.label}",
                reason="ROLE_TOO_LOW", metadata={"required": role.label,
                                                 "actual": self.role.label})


_current: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "principal", default=None)


def current() -> Principal:
    principal = _current.get()
    if principal is None:
        raise errors.Unauthenticated("no authenticated principal for this call")
    return principal


def set_current(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _current.set(principal)


def reset_current(token: contextvars.Token[Principal | None]) -> None:
    _current.reset(token)
