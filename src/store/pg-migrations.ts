/**
 * The PostgreSQL store's schema, one migration per entry, applied in order and recorded in
 * `schema_migrations`. Instances starting at once apply them one at a time (under an advisory
 * lock), so each runs exactly once. Append new migrations; never edit an applied one.
 */
export const PG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE runs (
    rowid BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    session_id TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    request TEXT NOT NULL,
    spec TEXT,
    key_name TEXT,
    cancel_on_disconnect BOOLEAN NOT NULL DEFAULT false,
    marker TEXT,
    owner TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    ended_at BIGINT,
    result TEXT
  );
  CREATE INDEX runs_status ON runs (status, rowid);
  CREATE INDEX runs_session ON runs (session_id, rowid);
  CREATE INDEX runs_created ON runs (created_at);
  CREATE INDEX runs_key_ended ON runs (key_name, ended_at);
  CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
  );
  CREATE TABLE webhook_deliveries (
    run_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempted_at BIGINT NOT NULL,
    url TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, delivery_id, attempt)
  );
  CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    due_at BIGINT NOT NULL
  );
  CREATE INDEX webhook_outbox_run ON webhook_outbox (run_id);
  CREATE TABLE approvals (
    rowid BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    key_name TEXT,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    record TEXT NOT NULL
  );
  CREATE INDEX approvals_run ON approvals (run_id, created_at);
  CREATE INDEX approvals_status ON approvals (status, created_at);
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    key_name TEXT,
    working_directory TEXT NOT NULL,
    title TEXT,
    first_prompt TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
  );
  CREATE INDEX sessions_active ON sessions (updated_at, id);
  `,
  // Cluster mode: the instances that share the database, follow-up messages for runs no instance
  // has claimed yet, and session transcripts (the Agent SDK's SessionStore) so sessions move.
  `
  CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    max_concurrent INTEGER NOT NULL,
    stopped_at BIGINT
  );
  CREATE TABLE queued_messages (
    rowid BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    id TEXT NOT NULL,
    turn TEXT NOT NULL
  );
  CREATE INDEX queued_messages_run ON queued_messages (run_id, rowid);
  CREATE INDEX runs_owner ON runs (owner, status);
  CREATE TABLE transcripts (
    n BIGSERIAL PRIMARY KEY,
    project_key TEXT NOT NULL,
    session_id TEXT NOT NULL,
    subpath TEXT NOT NULL DEFAULT '',
    uuid TEXT,
    entry TEXT NOT NULL,
    written_at BIGINT NOT NULL
  );
  CREATE UNIQUE INDEX transcripts_uuid ON transcripts (project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL;
  CREATE INDEX transcripts_session ON transcripts (session_id, project_key, subpath, n);
  `,
  // What each waiting message holds (its text and base64 images), for MAX_QUEUED_MESSAGE_BYTES.
  `
  ALTER TABLE queued_messages ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
  `
]
