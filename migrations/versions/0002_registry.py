"""Registry: components and blueprints with immutable versions.

Revision ID: 0002_registry
Revises: 0001_identity
Create Date: 2026-12-03
"""

from alembic import op

revision = "0002_registry"
down_revision = "0001_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- The mutable head of a component; its content lives in component_versions. Deleting sets
    -- delete_time and keeps the versions readable.
    CREATE TABLE components (
        project_id      text NOT NULL REFERENCES projects(id),
        id              text NOT NULL CHECK (id ~ '^[a-z][a-z0-9_-]{0,62}$'),
        kind            text NOT NULL CHECK (kind IN ('tool', 'agent', 'code', 'workflow')),
        display_name    text NOT NULL DEFAULT '',
        description     text NOT NULL DEFAULT '',
        tags            text[] NOT NULL DEFAULT '{}',
        latest_version  bigint NOT NULL CHECK (latest_version >= 1),
        etag            text NOT NULL,
        embedding       vector(256),              -- name + description, for SearchComponents
        embedder        text,                     -- which Embedder made `embedding`
        create_time     timestamptz NOT NULL DEFAULT now(),
        update_time     timestamptz NOT NULL DEFAULT now(),
        delete_time     timestamptz,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX components_embedding ON components USING hnsw (embedding vector_cosine_ops);

    CREATE TABLE component_versions (
        project_id    text NOT NULL,
        component_id  text NOT NULL,
        version       bigint NOT NULL CHECK (version >= 1),
        spec          jsonb NOT NULL,             -- the Component message, protobuf JSON
        message       bytea NOT NULL,             -- the same, binary (fast to decode)
        creator       text NOT NULL DEFAULT '',
        -- The Create request that made this version: a retry returns it (idempotency).
        request_id    text,
        create_time   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (project_id, component_id, version),
        FOREIGN KEY (project_id, component_id) REFERENCES components (project_id, id)
    );
    CREATE UNIQUE INDEX component_versions_request_id ON component_versions
        (project_id, request_id) WHERE request_id IS NOT NULL;

    CREATE TABLE blueprints (
        project_id      text NOT NULL REFERENCES projects(id),
        id              text NOT NULL CHECK (id ~ '^[a-z][a-z0-9_-]{0,62}$'),
        display_name    text NOT NULL DEFAULT '',
        description     text NOT NULL DEFAULT '',
        latest_version  bigint NOT NULL CHECK (latest_version >= 1),
        etag            text NOT NULL,
        create_time     timestamptz NOT NULL DEFAULT now(),
        update_time     timestamptz NOT NULL DEFAULT now(),
        delete_time     timestamptz,
        PRIMARY KEY (project_id, id)
    );
    CREATE INDEX blueprints_list ON blueprints (project_id, create_time, id)
        WHERE delete_time IS NULL;

    CREATE TABLE blueprint_versions (
        project_id    text NOT NULL,
        blueprint_id  text NOT NULL,
        version       bigint NOT NULL CHECK (version >= 1),
        spec          jsonb NOT NULL,             -- the Blueprint message, protobuf JSON
        message       bytea NOT NULL,             -- the same, binary (fast to decode)
        creator       text NOT NULL DEFAULT '',
        request_id    text,
        create_time   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (project_id, blueprint_id, version),
        FOREIGN KEY (project_id, blueprint_id) REFERENCES blueprints (project_id, id)
    );
    CREATE UNIQUE INDEX blueprint_versions_request_id ON blueprint_versions
        (project_id, request_id) WHERE request_id IS NOT NULL;
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE blueprint_versions;
    DROP TABLE blueprints;
    DROP TABLE component_versions;
    DROP TABLE components;
    """)
