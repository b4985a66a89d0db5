"""SQL for semantic_memory."""

from __future__ import annotations

from typing import Any

import psycopg
from pgvector import Vector
from psycopg.types.json import Jsonb


async def insert(conn: psycopg.AsyncConnection, *, project_id: str, memory_id: str,
                 content: str, metadata: dict[str, Any], embedding: list[float], embedder: str,
                 request_id: str | None) -> dict[str, Any]:
    row = await (await conn.execute(
        "INSERT INTO semantic_memory (project_id, id, content, metadata, embedding, embedder,"
        " request_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (project_id, request_id) WHERE request_id IS NOT NULL DO NOTHING"
        " RETURNING project_id, id, content, metadata, create_time",
        (project_id, memory_id, content, Jsonb(metadata), Vector(embedding),
         embedder, request_id))).fetchone()
    if row is None:  # a retry of an earlier request: return what it created
        row = await (await conn.execute(
            "SELECT project_id, id, content, metadata, create_time FROM semantic_memory"
            " WHERE project_id = %s AND request_id = %s", (project_id, request_id))).fetchone()
    assert row is not None
    return row


async def get(conn: psycopg.AsyncConnection, project_id: str,
              memory_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(
        "SELECT project_id, id, content, metadata, create_time FROM semantic_memory"
        " WHERE project_id = %s AND id = %s", (project_id, memory_id))).fetchone()


async def delete(conn: psycopg.AsyncConnection, project_id: str, memory_id: str) -> bool:
    cur = await conn.execute("DELETE FROM semantic_memory WHERE project_id = %s AND id = %s",
                             (project_id, memory_id))
    return cur.rowcount > 0


async def nearest(conn: psycopg.AsyncConnection, project_id: str, embedding: list[float],
                  limit: int) -> list[dict[str, Any]]:
    # Iterative index scans keep returning candidates until `limit` rows pass the project
    # filter (pgvector >= 0.8), so a small tenant in a big table still gets full results.
    async with conn.transaction():
        await conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cur = await conn.execute(
            "SELECT project_id, id, content, metadata, create_time,"
            " 1 - (embedding <=> %s) AS score FROM semantic_memory WHERE project_id = %s"
            " ORDER BY embedding <=> %s LIMIT %s",
            (Vector(embedding), project_id,
             Vector(embedding), limit))
        rows = await cur.fetchall()
    return sorted(rows, key=lambda r: -r["score"])
