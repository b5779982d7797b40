-- API keys made with `darkroom keys create`: only the SHA-256 of each key is kept.
CREATE TABLE api_keys (
    name        TEXT PRIMARY KEY NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    hint        TEXT NOT NULL,          -- the key's first characters, to tell keys apart
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Who uploaded what: /api/generate lets a key use only its own uploads.
CREATE TABLE uploads (
    key         TEXT PRIMARY KEY NOT NULL,
    owner       TEXT,
    created_at  INTEGER NOT NULL
);

-- Server-side secrets made once and shared by every instance on this database (the key
-- that signs /files URLs).
CREATE TABLE server_secrets (
    name        TEXT PRIMARY KEY NOT NULL,
    value       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- The per-key cap on unfinished tasks counts by owner and state.
CREATE INDEX tasks_owner_state ON tasks (owner, state) WHERE owner IS NOT NULL;
