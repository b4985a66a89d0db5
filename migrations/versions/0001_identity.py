"""Identity: organizations, projects, API tokens, audit log.

Revision ID: 0001_identity
Revises:
Create Date: 2026-12-03
"""

from alembic import op

revision = "0001_identity"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE EXTENSION IF NOT EXISTS vector;

    -- A tenant. Ids are the last segment of resource names (organizations/{id}).
    CREATE TABLE organizations (
        id            text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{0,62}$'),
        display_name  text NOT NULL DEFAULT '',
        create_time   timestamptz NOT NULL DEFAULT now()
    );

    -- The unit of isolation: every component, blueprint, run and memory belongs to one.
    CREATE TABLE projects (
        id               text PRIMARY KEY CHECK (id ~ '^[a-z][a-z0-9-]{0,62}$'),
        organization_id  text NOT NULL REFERENCES organizations(id),
        display_name     text NOT NULL DEFAULT '',
        request_id       text,
        create_time      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX projects_organization ON projects (organization_id, id);
    CREATE UNIQUE INDEX projects_request_id ON projects (organization_id, request_id)
        WHERE request_id IS NOT NULL;

    -- Bearer tokens. Only the SHA-256 of the secret is kept; `prefix` (public, unique) finds
    -- the row without scanning, then the hash is compared in constant time.
    CREATE TABLE api_tokens (
        id               text PRIMARY KEY,
        organization_id  text NOT NULL REFERENCES organizations(id),
        project_id       text REFERENCES projects(id),   -- NULL: the whole organization
        prefix           text NOT NULL UNIQUE,
        secret_sha256    bytea NOT NULL CHECK (length(secret_sha256) = 32),
        role             text NOT NULL CHECK (role IN ('viewer', 'editor', 'admin')),
        display_name     text NOT NULL DEFAULT '',
        creator          text NOT NULL DEFAULT '',
        request_id       text,
        create_time      timestamptz NOT NULL DEFAULT now(),
        expire_time      timestamptz,
        last_use_time    timestamptz,
        revoke_time      timestamptz
    );
    CREATE INDEX api_tokens_project ON api_tokens (project_id, create_time);
    CREATE UNIQUE INDEX api_tokens_request_id ON api_tokens (organization_id, request_id)
        WHERE request_id IS NOT NULL;

    -- Every write: who (token), what (method, resource), when, and how it ended.
    CREATE TABLE audit_log (
        id               bigserial PRIMARY KEY,
        time             timestamptz NOT NULL DEFAULT now(),
        organization_id  text,
        project_id       text,
        actor            text NOT NULL,          -- token resource name
        method           text NOT NULL,          -- full gRPC method
        resource         text NOT NULL DEFAULT '',
        outcome          text NOT NULL,          -- gRPC status code name, OK on success
        request_id       text NOT NULL DEFAULT '',
        details          jsonb NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_log_project_time ON audit_log (project_id, time);

    -- Keys this installation generated for itself (the page-token HMAC key when
    -- ICEOS_SECRET_KEY is not set), shared by every replica through the database.
    CREATE TABLE instance_keys (
        name         text PRIMARY KEY,
        key          bytea NOT NULL,
        create_time  timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE instance_keys;
    DROP TABLE audit_log;
    DROP TABLE api_tokens;
    DROP TABLE projects;
    DROP TABLE organizations;
    """)
