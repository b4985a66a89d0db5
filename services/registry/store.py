"""SQL for the registry: components, blueprints and their immutable versions.

`spec` columns hold the Component / Blueprint message as protobuf JSON. The orchestrator reads
pinned versions through the two `get_*_version` functions below."""

from __future__ import annotations

from typing import Any

import psycopg


async def get_blueprint_version(conn: psycopg.AsyncConnection, project_id: str,
                                blueprint_id: str, version: int | None = None
                                ) -> dict[str, Any] | None:
    """{version, spec, create_time, creator} of a blueprint version, or None. `version` None
    means the latest of a blueprint that is not deleted; a pinned version stays readable after
    the blueprint is deleted."""
    if version:
        return await (await conn.execute(
            "SELECT version, spec, create_time, creator FROM blueprint_versions"
            " WHERE project_id = %s AND blueprint_id = %s AND version = %s",
            (project_id, blueprint_id, version))).fetchone()
    return await (await conn.execute(
        "SELECT v.version, v.spec, v.create_time, v.creator FROM blueprints b"
        " JOIN blueprint_versions v ON v.project_id = b.project_id"
        "  AND v.blueprint_id = b.id AND v.version = b.latest_version"
        " WHERE b.project_id = %s AND b.id = %s AND b.delete_time IS NULL",
        (project_id, blueprint_id))).fetchone()


async def get_component_version(conn: psycopg.AsyncConnection, project_id: str,
                                component_id: str, version: int | None = None
                                ) -> dict[str, Any] | None:
    """{version, kind, spec, create_time, creator} of a component version, or None (same
    latest/pinned rules as blueprints)."""
    if version:
        return await (await conn.execute(
            "SELECT v.version, c.kind, v.spec, v.create_time, v.creator"
            " FROM component_versions v JOIN components c"
            "  ON c.project_id = v.project_id AND c.id = v.component_id"
            " WHERE v.project_id = %s AND v.component_id = %s AND v.version = %s",
            (project_id, component_id, version))).fetchone()
    return await (await conn.execute(
        "SELECT v.version, c.kind, v.spec, v.create_time, v.creator FROM components c"
        " JOIN component_versions v ON v.project_id = c.project_id"
        "  AND v.component_id = c.id AND v.version = c.latest_version"
        " WHERE c.project_id = %s AND c.id = %s AND c.delete_time IS NULL",
        (project_id, component_id))).fetchone()
