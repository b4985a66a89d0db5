"""Organizations and projects.

An organization-wide admin creates projects in its organization; anyone sees their own
organization and the projects their token reaches (a project token: its project; an
organization token: all of the organization's). Anything else is NOT_FOUND, so names of other
tenants do not leak.
"""

from __future__ import annotations

from typing import Any

import psycopg

from services.common import errors, names, pagination
from services.common.auth import project_not_found
from services.common.db import Database
from services.common.principal import Principal

from . import store

MAX_DISPLAY_NAME = 200
MAX_REQUEST_ID = 128


class Tenancy:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def organization(self, principal: Principal, name: str) -> dict[str, Any]:
        org_id = names.parse(name, "organizations/{organization}")["organization"]
        row = None
        if org_id == principal.organization_id:
            async with self.db.connection() as conn:
                row = await store.get_organization(conn, org_id)
        if row is None:
            raise errors.NotFound(f"{name} not found", reason="ORGANIZATION_NOT_FOUND",
                                  metadata={"resource": name})
        return row

    async def create_project(self, principal: Principal, project_id: str, display_name: str,
                             request_id: str = "") -> dict[str, Any]:
        violations = errors.Violations()
        if not names.PROJECT_ID.match(project_id or ""):
            violations.add("project_id", "use 1-63 lower-case letters, digits or hyphens, "
                                         "starting with a letter", "BAD_ID")
        if len(display_name) > MAX_DISPLAY_NAME:
            violations.add("project.display_name",
                           f"is longer than {MAX_DISPLAY_NAME} characters")
        if len(request_id) > MAX_REQUEST_ID:
            violations.add("request_id", f"is longer than {MAX_REQUEST_ID} characters")
        violations.raise_if_any()
        org = principal.organization_id
        async with self.db.connection() as conn:
            if request_id:
                first = await store.project_by_request_id(conn, org, request_id)
                if first is not None:
                    return self._same_request(first, project_id)
            try:
                async with conn.transaction():
                    return await store.create_project(conn, project_id, org, display_name,
                                                      request_id or None)
            except psycopg.errors.UniqueViolation:
                first = await store.project_by_request_id(conn, org, request_id) \
                    if request_id else None
                if first is not None:
                    return self._same_request(first, project_id)
                raise errors.AlreadyExists(f"project {project_id!r} already exists",
                                           reason="PROJECT_EXISTS",
                                           metadata={"resource": f"projects/{project_id}"})

    @staticmethod
    def _same_request(first: dict[str, Any], project_id: str) -> dict[str, Any]:
        if first["id"] != project_id:
            raise errors.InvalidArgument.field(
                "request_id", "was already used to create another project",
                "REQUEST_ID_REUSED")
        return first

    async def project(self, name: str) -> dict[str, Any]:
        """The interceptor has checked that the caller may see the project."""
        project_id = names.project_of(name, field="name")
        async with self.db.connection() as conn:
            row = await store.get_project(conn, project_id)
        if row is None:
            raise project_not_found(project_id)
        return row

    async def projects(self, principal: Principal, *, page_size: int,
                       page_token: str) -> tuple[list[dict[str, Any]], str]:
        limit = pagination.page_size(page_size)
        scope = f"ListProjects/{principal.organization_id}/{principal.project_id or ''}"
        after = None
        if page_token:
            after = pagination.decode(page_token, scope=scope).get("after")
            if not isinstance(after, str):
                raise errors.InvalidArgument.field("page_token", "is malformed",
                                                   "BAD_PAGE_TOKEN")
        async with self.db.connection() as conn:
            rows = await store.list_projects(conn, principal.organization_id,
                                             limit=limit + 1, after=after,
                                             only=principal.project_id)
        next_token = ""
        if len(rows) > limit:
            rows = rows[:limit]
            next_token = pagination.encode({"after": rows[-1]["id"]}, scope=scope)
        return rows, next_token
