/**
 * The run store's schema, one migration per entry, applied in order and recorded in SQLite's
 * `user_version`. Append new migrations; never edit an applied one.
 */
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    session_id TEXT NOT NULL,
    working_directory TEXT NOT NULL,
    -- The request as the client sent it, env var values left out.
    request TEXT NOT NULL,
    -- The resolved run, needed to queue it again after a restart. Holds env var values only while
    -- the run is queued; cleared when it starts.
    spec TEXT,
    key_name TEXT,
    cancel_on_disconnect INTEGER NOT NULL DEFAULT 0,
    -- Marks every process of the run, so a restart can find and kill a dead server's leftovers.
    marker TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    ended_at INTEGER,
    result TEXT
  );
  CREATE INDEX runs_status ON runs (status);
  CREATE INDEX runs_session ON runs (session_id);
  CREATE INDEX runs_created ON runs (created_at);
  CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
  ) WITHOUT ROWID;
  `,
  `
  -- Every attempt to deliver a run's webhook, kept with the run.
  CREATE TABLE webhook_deliveries (
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempted_at INTEGER NOT NULL,
    url TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, attempt)
  ) WITHOUT ROWID;
  CREATE INDEX runs_key_ended ON runs (key_name, ended_at);
  `,
  `
  -- Ownership of running runs: the instance that started a run holds it while its lease lasts;
  -- recovery takes only what it owned, or what nobody renewed.
  ALTER TABLE runs ADD COLUMN owner TEXT;
  ALTER TABLE runs ADD COLUMN lease_until INTEGER;
  `,
  `
  -- Webhooks still to be sent: the signed body and when the next attempt is due, so a restart
  -- resumes the schedule. A row goes once the webhook is delivered or given up.
  CREATE TABLE webhook_outbox (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    due_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX webhook_outbox_run ON webhook_outbox (run_id);
  -- A run may have several webhooks now (run.finished, approval.requested): attempts are kept
  -- per delivery.
  CREATE TABLE webhook_attempts (
    run_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    attempted_at INTEGER NOT NULL,
    url TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, delivery_id, attempt)
  ) WITHOUT ROWID;
  INSERT INTO webhook_attempts SELECT run_id, '', 'run.finished', attempt, attempted_at, url, status_code, error, duration_ms FROM webhook_deliveries;
  DROP TABLE webhook_deliveries;
  ALTER TABLE webhook_attempts RENAME TO webhook_deliveries;
  `,
  `
  -- Tool approvals of interactive runs: asked, then allowed or denied (answered, timed out, or
  -- ended with their run). The record is JSON; the columns are what lists filter by.
  CREATE TABLE approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    key_name TEXT,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    record TEXT NOT NULL
  );
  CREATE INDEX approvals_run ON approvals (run_id, created_at);
  CREATE INDEX approvals_status ON approvals (status, created_at);
  `,
  `
  -- Sessions as records of their own: who owns one no longer depends on its runs, which retention
  -- prunes. Sessions known before are taken from their first run.
  CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    key_name TEXT,
    working_directory TEXT NOT NULL,
    title TEXT,
    first_prompt TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
  );
  CREATE INDEX sessions_active ON sessions (updated_at, id);
  INSERT INTO sessions (id, key_name, working_directory, title, first_prompt, created_at, updated_at)
    SELECT r.session_id, r.key_name, r.working_directory, NULL, substr(json_extract(r.request, '$.prompt'), 1, 200), r.created_at,
      (SELECT MAX(COALESCE(ended_at, created_at)) FROM runs WHERE session_id = r.session_id)
    FROM runs r WHERE r.rowid = (SELECT MIN(rowid) FROM runs WHERE session_id = r.session_id);
  `
]
