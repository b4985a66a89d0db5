"""Semantic memory (pgvector).

The project column leads every b-tree index so filters stay per tenant; the HNSW index serves
nearest-neighbour search with pgvector's iterative scans applying the project filter.

Revision ID: 0004_memory
Revises: 0003_runs
Create Date: 2026-12-03
"""

from alembic import op

revision = "0004_memory"
down_revision = "0003_runs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE semantic_memory (
        project_id   text NOT NULL REFERENCES projects(id),
        id           text NOT NULL,
        content      text NOT NULL CHECK (octet_length(content) <= 65536),
        metadata     jsonb NOT NULL DEFAULT '{}',
        embedding    vector(256) NOT NULL,
        embedder     text NOT NULL,               -- which Embedder produced the vector
        request_id   text,
        create_time  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX semantic_memory_project_time ON semantic_memory (project_id, create_time);
    CREATE UNIQUE INDEX semantic_memory_request_id ON semantic_memory (project_id, request_id)
        WHERE request_id IS NOT NULL;
    CREATE INDEX semantic_memory_embedding ON semantic_memory
        USING hnsw (embedding vector_cosine_ops);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE semantic_memory;
    """)
