-- Idempotency-Key on /api/generate, /api/batches and /api/upload: per owner (the API key's
-- name; '' when keys are off) and key, the request that first used it and the answer it
-- got, replayed to a retry with the same key and body. Reserved with INSERT … ON CONFLICT
-- DO NOTHING before the work, so of two requests at once exactly one proceeds.
CREATE TABLE idempotency_keys (
    owner         TEXT NOT NULL,
    idem_key      TEXT NOT NULL,
    -- Hex SHA-256 of the method, path and body; NULL until an upload's body has been read.
    request_hash  TEXT,
    -- The request holding the key: only it may answer or release it.
    token         TEXT NOT NULL,
    -- A reservation still unanswered at this time lost its holder and is taken over.
    locked_until  BIGINT NOT NULL,
    -- The answer (status and JSON body), once there is one.
    status        BIGINT,
    body          BYTEA,
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT,
    -- Forgotten after this (taken over on its next use, or purged).
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (owner, idem_key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
