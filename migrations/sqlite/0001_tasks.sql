-- Tasks: the queue and the record of every generation. Times are Unix milliseconds.
CREATE TABLE tasks (
    id                  TEXT PRIMARY KEY NOT NULL,
    state               TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    prompt              TEXT NOT NULL,
    source              TEXT NOT NULL,
    image_url           TEXT NOT NULL,
    input_urls          TEXT NOT NULL,          -- JSON array
    aspect_ratio        TEXT NOT NULL,
    output_format       TEXT NOT NULL,
    priority            INTEGER NOT NULL DEFAULT 0,
    batch_id            TEXT,
    owner               TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    run_at              INTEGER NOT NULL,
    lease_owner         TEXT,
    lease_until         INTEGER,
    provider_task_id    TEXT,
    callback_token_hash TEXT NOT NULL,
    callback_at         INTEGER,
    result_source_urls  TEXT NOT NULL DEFAULT '[]', -- JSON array
    result_keys         TEXT NOT NULL DEFAULT '[]', -- JSON array
    result_urls         TEXT NOT NULL DEFAULT '[]', -- JSON array
    credits             INTEGER,
    cost_time_ms        INTEGER,
    error_code          TEXT,
    error_message       TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    submitted_at        INTEGER,
    completed_at        INTEGER
);

-- A provider's id names at most one task.
CREATE UNIQUE INDEX tasks_provider_task_id ON tasks (provider, provider_task_id)
    WHERE provider_task_id IS NOT NULL;

-- The dispatcher's claim: queued tasks by priority, then age.
CREATE INDEX tasks_queue ON tasks (priority DESC, created_at ASC)
    WHERE state = 'queued';

-- Every other claim: due work per state.
CREATE INDEX tasks_due ON tasks (state, run_at);

CREATE INDEX tasks_batch ON tasks (batch_id) WHERE batch_id IS NOT NULL;
