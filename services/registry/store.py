"""SQL for the registry: components, blueprints and their immutable versions.

`spec` columns hold the Component / Blueprint message as protobuf JSON. The orchestrator reads
pinned versions through the two `get_*_version` functions below. Both collections have the same
shape (a mutable head row plus immutable version rows), so the rest of this module is written
once over a `Table`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pgvector import Vector
from psycopg.types.json import Jsonb


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


# -- both collections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    heads: str
    versions: str
    # The versions table's column naming the head.
    ref: str
    # Head columns beyond the common ones, writable through `head_fields`.
    extra: tuple[str, ...] = ()
    # Filterable fields → SQL expressions over the head row `h`.
    filters: tuple[tuple[str, str], ...] = ()
    # Keyset order of List: "create_time" (then id) or "id".
    order: str = "create_time"


BLUEPRINTS = Table("blueprints", "blueprint_versions", "blueprint_id",
                   filters=(("display_name", "h.display_name"), ("description", "h.description"),
                            ("create_time", "h.create_time"), ("update_time", "h.update_time")))
COMPONENTS = Table("components", "component_versions", "component_id",
                   extra=("kind", "tags", "embedding", "embedder"),
                   filters=(("display_name", "h.display_name"), ("description", "h.description"),
                            ("create_time", "h.create_time"), ("update_time", "h.update_time"),
                            ("kind", "h.kind"), ("tags", "h.tags"), ("builtin", "false")),
                   order="id")

_HEAD = ("h.project_id, h.id, h.display_name, h.description, h.latest_version, h.etag,"
         " h.create_time, h.update_time, h.delete_time")


def _head_columns(table: Table) -> str:
    extra = "".join(f", h.{c}" for c in table.extra if c not in ("embedding",))
    return _HEAD + extra


def _select_latest(table: Table) -> str:
    return (f"SELECT {_head_columns(table)}, v.message, v.create_time AS version_time, v.creator"
            f" FROM {table.heads} h JOIN {table.versions} v ON v.project_id = h.project_id"
            f" AND v.{table.ref} = h.id AND v.version = h.latest_version")


async def get_latest(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                     resource_id: str) -> dict[str, Any] | None:
    """The head plus its latest version's spec, if not deleted."""
    return await (await conn.execute(
        _select_latest(table) + " WHERE h.project_id = %s AND h.id = %s"
        " AND h.delete_time IS NULL", (project_id, resource_id))).fetchone()


async def get_many_latest(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                          ids: Sequence[str]) -> list[dict[str, Any]]:
    if not ids:
        return []
    return await (await conn.execute(
        _select_latest(table) + " WHERE h.project_id = %s AND h.id = ANY(%s)"
        " AND h.delete_time IS NULL", (project_id, list(ids)))).fetchall()


async def get_version(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                      resource_id: str, version: int) -> dict[str, Any] | None:
    """One version (readable after its head is deleted), with its head's columns."""
    return await (await conn.execute(
        f"SELECT {_head_columns(table)}, v.version, v.message, v.create_time AS version_time,"
        f" v.creator FROM {table.versions} v JOIN {table.heads} h"
        f" ON h.project_id = v.project_id AND h.id = v.{table.ref}"
        f" WHERE v.project_id = %s AND v.{table.ref} = %s AND v.version = %s",
        (project_id, resource_id, version))).fetchone()


async def get_versions(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                       keys: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    """Several pinned versions at once: [(id, version)]."""
    if not keys:
        return []
    return await (await conn.execute(
        f"SELECT v.{table.ref} AS id, v.version, v.message FROM {table.versions} v"
        f" JOIN unnest(%s::text[], %s::bigint[]) AS k(id, version)"
        f"  ON v.{table.ref} = k.id AND v.version = k.version WHERE v.project_id = %s",
        ([k[0] for k in keys], [k[1] for k in keys], project_id))).fetchall()


async def find_by_request(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                          request_id: str) -> dict[str, Any] | None:
    """The version a Create with this request_id made, with its head's columns."""
    return await (await conn.execute(
        f"SELECT {_head_columns(table)}, v.version, v.message, v.create_time AS version_time,"
        f" v.creator FROM {table.versions} v JOIN {table.heads} h"
        f" ON h.project_id = v.project_id AND h.id = v.{table.ref}"
        f" WHERE v.project_id = %s AND v.request_id = %s", (project_id, request_id))).fetchone()


def _adapt(column: str, value: Any) -> Any:
    if column == "embedding" and value is not None:
        return Vector(value)
    return value


async def insert_head(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                      resource_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
    """Create the head at version 1, or revive a deleted one at its next version (old versions
    stay, numbering goes on). None when a live resource already has this id. The caller sets
    the etag with `append_version` in the same transaction."""
    columns = ["display_name", "description", *[c for c in table.extra if c in fields]]
    values = [_adapt(c, fields.get(c, "")) for c in columns]
    names = ", ".join(columns)
    placeholders = ", ".join(["%s"] * len(columns))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    return await (await conn.execute(
        f"INSERT INTO {table.heads} AS h (project_id, id, {names}, latest_version, etag)"
        f" VALUES (%s, %s, {placeholders}, 1, '')"
        f" ON CONFLICT (project_id, id) DO UPDATE SET {updates},"
        f"  latest_version = h.latest_version + 1, delete_time = NULL,"
        f"  create_time = now(), update_time = now()"
        f" WHERE h.delete_time IS NOT NULL"
        f" RETURNING h.latest_version", (project_id, resource_id, *values))).fetchone()


async def lock_head(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                    resource_id: str) -> dict[str, Any] | None:
    """The live head, locked until the transaction ends."""
    return await (await conn.execute(
        f"SELECT latest_version, etag FROM {table.heads} WHERE project_id = %s AND id = %s"
        f" AND delete_time IS NULL FOR UPDATE", (project_id, resource_id))).fetchone()


async def append_version(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                         resource_id: str, version: int, spec: dict[str, Any], message: bytes,
                         creator: str,
                         request_id: str | None, fields: dict[str, Any],
                         etag_of: Any) -> datetime:
    """Insert version `version` and point the head at it; `etag_of(create_time)` gives the
    new etag. Returns the version's create_time."""
    row = await (await conn.execute(
        f"INSERT INTO {table.versions} (project_id, {table.ref}, version, spec, message,"
        f" creator, request_id) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING create_time",
        (project_id, resource_id, version, Jsonb(spec), message, creator,
         request_id))).fetchone()
    assert row is not None
    created: datetime = row["create_time"]
    columns = ["display_name", "description", *[c for c in table.extra if c in fields]]
    sets = ", ".join(f"{c} = %s" for c in columns)
    await conn.execute(
        f"UPDATE {table.heads} SET {sets}, latest_version = %s, etag = %s, update_time = %s"
        f" WHERE project_id = %s AND id = %s",
        (*[_adapt(c, fields.get(c, "")) for c in columns], version, etag_of(created), created,
         project_id, resource_id))
    return created


async def soft_delete(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                      resource_id: str) -> None:
    await conn.execute(
        f"UPDATE {table.heads} SET delete_time = now() WHERE project_id = %s AND id = %s",
        (project_id, resource_id))


@dataclass(frozen=True)
class Condition:
    """One filter term: `field op value` (op one of = != < <= > >= :)."""

    field: str
    op: str
    value: Any


_SQL_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _where(table: Table, conditions: Sequence[Condition]) -> tuple[str, list[Any]]:
    sql, params = [], []
    columns = dict(table.filters)
    for c in conditions:
        column = columns[c.field]
        if c.op == ":":
            if c.field == "tags":
                sql.append(f"%s = ANY({column})")
                params.append(c.value)
            else:
                sql.append(f"strpos(lower({column}), lower(%s)) > 0")
                params.append(str(c.value))
        else:
            sql.append(f"{column} {_SQL_OPS[c.op]} %s")
            params.append(c.value)
    return "".join(f" AND {s}" for s in sql), params


async def list_latest(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                      conditions: Sequence[Condition], after: list[Any] | None,
                      limit: int) -> list[dict[str, Any]]:
    """Live resources matching every condition, in keyset order after `after`."""
    where, params = _where(table, conditions)
    if table.order == "id":
        order = "h.id"
        if after:
            where += " AND h.id > %s"
            params.append(after[0])
    else:
        order = "h.create_time, h.id"
        if after:
            where += " AND (h.create_time, h.id) > (%s::timestamptz, %s)"
            params.extend(after[:2])
    return await (await conn.execute(
        _select_latest(table) + f" WHERE h.project_id = %s AND h.delete_time IS NULL{where}"
        f" ORDER BY {order} LIMIT %s", (project_id, *params, limit))).fetchall()


async def list_versions(conn: psycopg.AsyncConnection, table: Table, project_id: str,
                        resource_id: str, before: int | None, limit: int
                        ) -> list[dict[str, Any]] | None:
    """Versions newest first (None if the resource never existed); deleted heads included."""
    head = await (await conn.execute(
        f"SELECT 1 FROM {table.heads} WHERE project_id = %s AND id = %s",
        (project_id, resource_id))).fetchone()
    if head is None:
        return None
    return await (await conn.execute(
        f"SELECT {_head_columns(table)}, v.version, v.message, v.create_time AS version_time,"
        f" v.creator FROM {table.versions} v JOIN {table.heads} h"
        f" ON h.project_id = v.project_id AND h.id = v.{table.ref}"
        f" WHERE v.project_id = %s AND v.{table.ref} = %s AND v.version < %s"
        f" ORDER BY v.version DESC LIMIT %s",
        (project_id, resource_id, before or 2**62, limit))).fetchall()


# -- search ----------------------------------------------------------------------------------------


async def stale_embeddings(conn: psycopg.AsyncConnection, project_id: str,
                           embedder: str) -> list[dict[str, Any]]:
    """Live components whose embedding another embedder made (or none did)."""
    return await (await conn.execute(
        "SELECT id, display_name, description, tags FROM components WHERE project_id = %s"
        " AND delete_time IS NULL AND embedder IS DISTINCT FROM %s",
        (project_id, embedder))).fetchall()


async def set_embedding(conn: psycopg.AsyncConnection, project_id: str, component_id: str,
                        embedding: list[float], embedder: str) -> None:
    await conn.execute(
        "UPDATE components SET embedding = %s, embedder = %s WHERE project_id = %s AND id = %s",
        (Vector(embedding), embedder, project_id, component_id))


async def nearest_components(conn: psycopg.AsyncConnection, project_id: str,
                             embedding: list[float], kinds: Sequence[str],
                             limit: int) -> list[dict[str, Any]]:
    """The project's live components nearest to `embedding` (cosine), best first."""
    query = Vector(embedding)
    kind_filter = " AND kind = ANY(%s)" if kinds else ""
    params: list[Any] = [query, project_id, *([list(kinds)] if kinds else []), query, limit]
    # HNSW with a filter: iterative index scans keep reading the index until `limit` rows pass
    # the project filter (pgvector >= 0.8), so a small project in a big table gets full results.
    async with conn.transaction():
        await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        ranked = await (await conn.execute(
            "SELECT id, 1 - (embedding <=> %s) AS score FROM components"
            " WHERE project_id = %s AND delete_time IS NULL AND embedding IS NOT NULL"
            + kind_filter + " ORDER BY embedding <=> %s LIMIT %s", params)).fetchall()
    scores = {r["id"]: float(r["score"]) for r in ranked}
    rows = await get_many_latest(conn, COMPONENTS, project_id, list(scores))
    for row in rows:
        row["score"] = scores[row["id"]]
    return sorted(rows, key=lambda r: (-r["score"], r["id"]))
