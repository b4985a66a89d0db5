"""Runs: durable execution (ARCHITECTURE §5).

A run is claimed by one worker at a time through a lease (worker_id, lease_expires_at) renewed
by heartbeat; an expired lease makes it claimable again. Each node's state, output and events are
written before dependents start, so a resuming worker re-executes only unfinished nodes.

Revision ID: 0003_runs
Revises: 0002_registry
Create Date: 2026-12-03
"""

from alembic import op

revision = "0003_runs"
down_revision = "0002_registry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- Value checks of the hot columns live in domains, not in table CHECK constraints:
    -- Postgres re-reads a table's CHECK expressions from their stored text at every statement
    -- that writes the table, but keeps a domain's parsed (a checkpoint batch writes four of
    -- these tables many times a second; this is ~15% of its cost). Same CheckViolation.
    CREATE DOMAIN run_state AS text CHECK (VALUE IN
        ('QUEUED', 'RUNNING', 'WAITING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT'));
    CREATE DOMAIN run_node_state AS text CHECK (VALUE IN
        ('PENDING', 'RUNNING', 'WAITING', 'SUCCEEDED', 'FAILED', 'SKIPPED', 'CANCELLED',
         'TIMED_OUT'));
    CREATE DOMAIN node_attempt_outcome AS text CHECK (VALUE IN
        ('SUCCEEDED', 'FAILED', 'TIMED_OUT', 'CANCELLED', 'ABANDONED'));
    CREATE DOMAIN run_count AS int CHECK (VALUE >= 0);
    CREATE DOMAIN run_ordinal AS bigint CHECK (VALUE >= 1);
    CREATE DOMAIN run_attempt AS int CHECK (VALUE >= 1);

    CREATE TABLE runs (
        id                 text PRIMARY KEY,
        project_id         text NOT NULL REFERENCES projects(id),
        blueprint_id       text,                   -- NULL for an inline blueprint
        blueprint_version  bigint,
        spec               jsonb NOT NULL,         -- the pinned Blueprint, protobuf JSON
        -- Component and blueprint versions resolved at start: {"<reference>": version}.
        pins               jsonb NOT NULL DEFAULT '{}',
        inputs             jsonb NOT NULL DEFAULT '{}',
        state              run_state NOT NULL DEFAULT 'QUEUED',
        output             jsonb,
        error              jsonb,
        usage              jsonb NOT NULL DEFAULT '{}',
        request_id         text,
        creator            text NOT NULL DEFAULT '',
        -- Child runs started by a workflow node.
        parent_run_id      text REFERENCES runs(id),
        parent_node        text,
        depth              run_count NOT NULL DEFAULT 0,
        -- The lease: who executes the run and until when, unless renewed.
        worker_id          text,
        lease_expires_at   timestamptz,
        claim_count        int NOT NULL DEFAULT 0,  -- >1 means the run was resumed
        -- A WAITING run is claimable again at wake_at (a human node's timeout, a retry backoff).
        wake_at            timestamptz,
        deadline           timestamptz,
        cancel_requested   boolean NOT NULL DEFAULT false,
        cancel_reason      text,
        create_time        timestamptz NOT NULL DEFAULT now(),
        start_time         timestamptz,
        end_time           timestamptz,
        update_time        timestamptz NOT NULL DEFAULT now()
    );
    -- A run row is updated by heartbeats and by the run's own changes (checkpoint batches only
    -- lock it; its last event sequence is read from run_events): keep the blueprint snapshot
    -- and the inputs out of line (uncompressed) so an update copies a small row.
    ALTER TABLE runs ALTER COLUMN spec SET STORAGE EXTERNAL,
                     ALTER COLUMN inputs SET STORAGE EXTERNAL,
                     ALTER COLUMN pins SET STORAGE EXTERNAL,
                     SET (toast_tuple_target = 256, fillfactor = 80);
    CREATE UNIQUE INDEX runs_request_id ON runs (project_id, request_id)
        WHERE request_id IS NOT NULL;
    CREATE INDEX runs_list ON runs (project_id, create_time DESC, id);
    -- What workers scan: unfinished runs, oldest first.
    CREATE INDEX runs_claimable ON runs (create_time)
        WHERE state IN ('QUEUED', 'RUNNING', 'WAITING');
    CREATE INDEX runs_children ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
    CREATE INDEX runs_list_state ON runs (project_id, state, create_time DESC, id);

    -- run_nodes, node_attempts and run_events take a checkpoint batch's rows (several per
    -- node, many times a second). They carry no foreign key to runs: the per-row key check
    -- costs about a fifth of a batch, and the batch statement (store._BATCH) already holds
    -- every run it writes for row-locked (KEY SHARE, the fence) while it inserts, as
    -- insert_run inserts the run and its first event in one statement. Runs are never
    -- deleted; whatever deletes them must delete these rows too.

    -- One row per node execution path (`each[2].fetch`); the checkpoint a resume reads.
    CREATE TABLE run_nodes (
        run_id       text NOT NULL,
        path         text NOT NULL,
        node_id      text NOT NULL,
        kind         text NOT NULL,
        state        run_node_state NOT NULL,
        attempt      run_count NOT NULL DEFAULT 0,
        output       jsonb,
        error        jsonb,
        usage        jsonb NOT NULL DEFAULT '{}',
        wake_at      timestamptz,
        start_time   timestamptz,
        end_time     timestamptz,
        update_time  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, path)
    );

    -- Each attempt of a node, keyed by its idempotency key `run/node/attempt`: at-least-once
    -- execution is visible here, and a completion is recorded exactly once. The key is the
    -- primary key spelled out (no index of its own).
    CREATE TABLE node_attempts (
        run_id           text NOT NULL,
        path             text NOT NULL,
        attempt          run_attempt NOT NULL,
        idempotency_key  text NOT NULL,
        worker_id        text NOT NULL,
        outcome          node_attempt_outcome,
        start_time       timestamptz NOT NULL DEFAULT now(),
        end_time         timestamptz,
        PRIMARY KEY (run_id, path, attempt)
    );

    -- The durable event log. Redis pub/sub only wakes listeners; readers replay from here.
    CREATE TABLE run_events (
        run_id   text NOT NULL,
        seq      run_ordinal NOT NULL,
        type     text NOT NULL,
        node     text NOT NULL DEFAULT '',
        payload  jsonb NOT NULL DEFAULT '{}',
        time     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, seq)
    );

    -- Answers to human nodes: at most one per node path.
    CREATE TABLE run_signals (
        run_id       text NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        node         text NOT NULL,
        decision     text NOT NULL CHECK (decision IN ('APPROVE', 'REJECT', 'INPUT')),
        input        jsonb,
        comment      text NOT NULL DEFAULT '',
        actor        text NOT NULL DEFAULT '',
        create_time  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, node)
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE run_signals;
    DROP TABLE run_events;
    DROP TABLE node_attempts;
    DROP TABLE run_nodes;
    DROP TABLE runs;
    DROP DOMAIN run_attempt;
    DROP DOMAIN run_ordinal;
    DROP DOMAIN run_count;
    DROP DOMAIN node_attempt_outcome;
    DROP DOMAIN run_node_state;
    DROP DOMAIN run_state;
    """)
