-- A batch: tasks queued together by POST /api/batches. Its tasks carry batch_id; the
-- counts and credits are computed from them, so only what the tasks do not hold is here.
CREATE TABLE batches (
    id          TEXT PRIMARY KEY,
    owner       TEXT,
    prompt      TEXT NOT NULL,
    -- Where completion / failure events of its tasks are POSTed (Standard Webhooks).
    webhook_url TEXT,
    total       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Listing a caller's batches newest first (ids are UUIDv7: time-ordered).
CREATE INDEX batches_owner_id ON batches (owner, id);
