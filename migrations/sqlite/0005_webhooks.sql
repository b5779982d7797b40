-- Outbound webhooks (Standard Webhooks). A task asked for one (its own webhookUrl, or its
-- batch's) carries the URL; its delivery row is written in the same transaction as the
-- task, so a crash can never lose it. The row waits while the task runs and is delivered
-- (and retried with backoff) once the task is final.
ALTER TABLE tasks ADD COLUMN webhook_url TEXT;

CREATE TABLE webhook_deliveries (
    -- The webhook-id header: the same on every attempt, so receivers can deduplicate.
    id           TEXT PRIMARY KEY,
    task_id      TEXT NOT NULL UNIQUE REFERENCES tasks (id),
    url          TEXT NOT NULL,
    -- pending (waiting for the task, or for its next attempt) | delivered | failed
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    -- When the next attempt may run (Unix ms); also the lease of an attempt in flight.
    run_at       INTEGER NOT NULL,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, run_at);
