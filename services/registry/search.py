"""SearchComponents: rank a project's components and the built-ins by the meaning of a query.

Project components carry an embedding (name, id words, description, tags) in Postgres, searched
with pgvector's HNSW index under the project filter. Built-ins are ranked in process: they ship
with the code, there are a handful, and their vectors are computed once per embedder and cached.
Storing them in every project would multiply rows and need re-syncing on every deploy or
embedder change; a cosine over a few vectors costs microseconds, and both sides use the same
score, so merging them is exact.

A component embedded by an older embedder (e.g. after an embedder upgrade) is re-embedded the
next time its project is searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from services.common import errors, names
from services.common.db import Database
from services.common.embedding import DEFAULT_EMBEDDER, Embedder

from . import convert, store
from .components import builtin_records, search_text

MAX_QUERY_CHARS = 1000
MAX_RESULTS = 100
DEFAULT_RESULTS = 10


@dataclass(frozen=True)
class Match:
    component: Any
    score: float


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


class Search:
    def __init__(self, db: Database, embedder: Embedder = DEFAULT_EMBEDDER) -> None:
        self.db = db
        self.embedder = embedder
        self._builtin_vectors: dict[str, list[float]] = {}

    def _builtin_vector(self, name: str, text: str) -> list[float]:
        key = f"{self.embedder.name}:{name}"
        if key not in self._builtin_vectors:
            self._builtin_vectors[key] = self.embedder.embed(text)
        return self._builtin_vectors[key]

    async def search(self, parent: str, query: str, page_size: int,
                     kinds: list[str]) -> list[Match]:
        project_id = names.project_of(parent)
        violations = errors.Violations()
        if not query.strip():
            violations.add("query", "is required: describe what the component should do",
                           "REQUIRED")
        elif len(query) > MAX_QUERY_CHARS:
            violations.add("query", f"is longer than {MAX_QUERY_CHARS} characters", "TOO_LONG")
        if not 0 <= page_size <= MAX_RESULTS:
            violations.add("page_size", f"must be between 0 and {MAX_RESULTS} (0 means "
                                        f"{DEFAULT_RESULTS})", "OUT_OF_RANGE")
        violations.raise_if_any()
        limit = page_size or DEFAULT_RESULTS
        vector = self.embedder.embed(query)
        async with self.db.connection() as conn:
            await self._refresh(conn, project_id)
            rows = await store.nearest_components(conn, project_id, vector, kinds, limit)
        matches = [Match(convert.component(r), float(r["score"])) for r in rows]
        if not kinds or "tool" in kinds:
            for tool, record in builtin_records():
                text = search_text(tool.display_name, tool.description, tool.name,
                                   list(tool.tags))
                matches.append(Match(convert.builtin_component(tool),
                                     _cosine(vector, self._builtin_vector(tool.name, text))))
        matches.sort(key=lambda m: (-m.score, m.component.name))
        return matches[:limit]

    async def _refresh(self, conn: Any, project_id: str) -> None:
        for row in await store.stale_embeddings(conn, project_id, self.embedder.name):
            text = search_text(row["display_name"], row["description"], row["id"],
                               list(row["tags"] or []))
            await store.set_embedding(conn, project_id, row["id"], self.embedder.embed(text),
                                      self.embedder.name)
