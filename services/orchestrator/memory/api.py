"""MemoryService servicer: proto ⇄ domain, nothing else."""

from __future__ import annotations

import secrets
from typing import Any

import grpc
from google.protobuf import empty_pb2
from iceos.memory.v1 import memory_pb2, memory_pb2_grpc

from services.common import errors, names
from services.common.convert import dict_to_struct, struct_to_dict, timestamp
from services.common.db import Database
from services.common.embedding import DEFAULT_EMBEDDER, Embedder

from . import store

MAX_CONTENT_BYTES = 64 * 1024


def _to_proto(row: dict[str, Any]) -> memory_pb2.Memory:
    return memory_pb2.Memory(
        name=f"projects/{row['project_id']}/memories/{row['id']}", content=row["content"],
        metadata=dict_to_struct(row["metadata"]), create_time=timestamp(row["create_time"]))


def _memory_ids(name: str) -> tuple[str, str]:
    ids = names.parse(name, "projects/{project}/memories/{memory}")
    return ids["project"], ids["memory"]


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    def __init__(self, db: Database, embedder: Embedder = DEFAULT_EMBEDDER) -> None:
        self.db = db
        self.embedder = embedder

    async def CreateMemory(self, request: memory_pb2.CreateMemoryRequest,
                           context: grpc.aio.ServicerContext) -> memory_pb2.Memory:
        project = names.project_of(request.parent)
        violations = errors.Violations()
        content = request.memory.content
        if not content.strip():
            violations.add("memory.content", "must not be empty")
        elif len(content.encode()) > MAX_CONTENT_BYTES:
            violations.add("memory.content", f"is larger than {MAX_CONTENT_BYTES} bytes")
        memory_id = request.memory_id or "mem-" + secrets.token_hex(8)
        if request.memory_id and not names.RESOURCE_ID.match(request.memory_id):
            violations.add("memory_id", "use lower-case letters, digits, '-' or '_', starting "
                                        "with a letter, at most 63 characters")
        violations.raise_if_any()
        async with self.db.connection() as conn:
            try:
                row = await store.insert(
                    conn, project_id=project, memory_id=memory_id, content=content,
                    metadata=struct_to_dict(request.memory.metadata),
                    embedding=self.embedder.embed(content), embedder=self.embedder.name,
                    request_id=request.request_id or None)
            except Exception as exc:
                if exc.__class__.__name__ == "UniqueViolation":
                    raise errors.AlreadyExists(
                        f"memory {memory_id!r} already exists in project {project!r}") from None
                raise
        return _to_proto(row)

    async def GetMemory(self, request: memory_pb2.GetMemoryRequest,
                        context: grpc.aio.ServicerContext) -> memory_pb2.Memory:
        project, memory_id = _memory_ids(request.name)
        async with self.db.connection() as conn:
            row = await store.get(conn, project, memory_id)
        if row is None:
            raise errors.NotFound(f"{request.name} not found")
        return _to_proto(row)

    async def DeleteMemory(self, request: memory_pb2.DeleteMemoryRequest,
                           context: grpc.aio.ServicerContext) -> empty_pb2.Empty:
        project, memory_id = _memory_ids(request.name)
        async with self.db.connection() as conn:
            if not await store.delete(conn, project, memory_id):
                raise errors.NotFound(f"{request.name} not found")
        return empty_pb2.Empty()

    async def SearchMemories(self, request: memory_pb2.SearchMemoriesRequest,
                             context: grpc.aio.ServicerContext
                             ) -> memory_pb2.SearchMemoriesResponse:
        project = names.project_of(request.parent)
        if not request.query.strip():
            raise errors.InvalidArgument.field("query", "must not be empty")
        if not 0 <= request.page_size <= 100:
            raise errors.InvalidArgument.field("page_size", "must be between 1 and 100")
        async with self.db.connection() as conn:
            rows = await store.nearest(conn, project, self.embedder.embed(request.query),
                                       request.page_size or 10)
        return memory_pb2.SearchMemoriesResponse(matches=[
            memory_pb2.MemoryMatch(memory=_to_proto(r), score=float(r["score"])) for r in rows])
