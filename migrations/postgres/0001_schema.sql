-- darkroom's schema on PostgreSQL: the same tables and meaning as migrations/sqlite
-- (0001-0008) in one migration. Times are Unix milliseconds (BIGINT), lists are TEXT[].
-- Ids and names are compared and ordered byte by byte (COLLATE "C"), as on SQLite: ids
-- are time-ordered and pages of listings are cut with `id < cursor`.

-- Tasks: the queue and the record of every generation.
CREATE TABLE tasks (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    state               TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    prompt              TEXT NOT NULL,
    source              TEXT NOT NULL,
    image_url           TEXT NOT NULL,
    input_urls          TEXT[] NOT NULL,
    aspect_ratio        TEXT NOT NULL,
    output_format       TEXT NOT NULL,
    priority            INTEGER NOT NULL DEFAULT 0,
    batch_id            TEXT COLLATE "C",
    owner               TEXT COLLATE "C",
    attempts            BIGINT NOT NULL DEFAULT 0,
    run_at              BIGINT NOT NULL,
    lease_owner         TEXT,
    lease_until         BIGINT,
    provider_task_id    TEXT,
    callback_token_hash TEXT NOT NULL,
    callback_at         BIGINT,
    result_source_urls  TEXT[] NOT NULL DEFAULT '{}',
    result_keys         TEXT[] NOT NULL DEFAULT '{}',
    result_urls         TEXT[] NOT NULL DEFAULT '{}',
    credits             BIGINT,
    cost_time_ms        BIGINT,
    error_code          TEXT,
    error_message       TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    submitted_at        BIGINT,
    completed_at        BIGINT,
    -- A retried task is a new task; it points at the one it retries.
    retry_of            TEXT,
    -- Where this task's outbound webhook goes (its delivery row is in webhook_deliveries).
    webhook_url         TEXT,
    -- "No such task" answers from the provider in a row, for a task it had accepted.
    missing_answers     BIGINT NOT NULL DEFAULT 0
);

-- A provider's id names at most one task.
CREATE UNIQUE INDEX tasks_provider_task_id ON tasks (provider, provider_task_id)
    WHERE provider_task_id IS NOT NULL;

-- The dispatcher's claim: queued tasks per provider by priority, then age.
CREATE INDEX tasks_queue ON tasks (provider, priority DESC, created_at ASC)
    WHERE state = 'queued';

-- Every other claim: due work per state.
CREATE INDEX tasks_due ON tasks (state, run_at);

CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;

-- Listing a caller's tasks newest first.
CREATE INDEX tasks_owner_id ON tasks (owner, id);

-- The per-key cap on unfinished tasks counts by owner and state.
CREATE INDEX tasks_owner_state ON tasks (owner, state) WHERE owner IS NOT NULL;

-- API keys made with `darkroom keys create`: only the SHA-256 of each key is kept.
CREATE TABLE api_keys (
    name        TEXT COLLATE "C" PRIMARY KEY,
    key_hash    TEXT NOT NULL UNIQUE,
    hint        TEXT NOT NULL,          -- the key's first characters, to tell keys apart
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Who uploaded what: /api/generate lets a key use only its own uploads.
CREATE TABLE uploads (
    key         TEXT PRIMARY KEY,
    owner       TEXT,
    created_at  BIGINT NOT NULL
);

-- Server-side secrets made once and shared by every instance on this database (the key
-- that signs /files URLs).
CREATE TABLE server_secrets (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A batch: tasks queued together by POST /api/batches. Counts and credits are computed
-- from its tasks.
CREATE TABLE batches (
    id          TEXT COLLATE "C" PRIMARY KEY,
    owner       TEXT COLLATE "C",
    prompt      TEXT NOT NULL,
    -- Where completion / failure events of its tasks are POSTed (Standard Webhooks).
    webhook_url TEXT,
    total       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Listing a caller's batches newest first (ids are UUIDv7: time-ordered).
CREATE INDEX batches_owner_id ON batches (owner, id);

-- Outbound webhooks (Standard Webhooks): one delivery row per task that asked for one,
-- written in the task's transaction, delivered (and retried) once the task is final.
CREATE TABLE webhook_deliveries (
    -- The webhook-id header: the same on every attempt, so receivers can deduplicate.
    id           TEXT PRIMARY KEY,
    task_id      TEXT COLLATE "C" NOT NULL UNIQUE REFERENCES tasks (id),
    url          TEXT NOT NULL,
    -- pending (waiting for the task, or for its next attempt) | delivered | failed
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     BIGINT NOT NULL DEFAULT 0,
    -- When the next attempt may run (Unix ms); also the lease of an attempt in flight.
    run_at       BIGINT NOT NULL,
    last_status  BIGINT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, run_at);

-- The Standard Webhooks signing secret of each API key, by the key's name (the owner that
-- tasks carry), made on first use with INSERT ... ON CONFLICT DO NOTHING.
CREATE TABLE webhook_secrets (
    owner            TEXT PRIMARY KEY,
    secret           TEXT NOT NULL,          -- whsec_<base64 of 32 random bytes>
    -- The secret before the last rotation: deliveries are signed with it too until
    -- previous_until, so receivers can switch without a gap.
    previous_secret  TEXT,
    previous_until   BIGINT,
    created_at       BIGINT NOT NULL,        -- the first secret
    rotated_at       BIGINT                  -- the current secret, when it was rotated in
);

-- /readyz proves the database accepts writes by inserting a row here inside a transaction
-- it rolls back: the table stays empty.
CREATE TABLE write_probe (
    filler BYTEA NOT NULL
);
