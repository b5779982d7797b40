-- The Standard Webhooks signing secret of each API key, by the key's name (the owner that
-- tasks carry). Made on first use — for keys from DARKROOM_API_KEYS as well as stored ones —
-- with INSERT … ON CONFLICT DO NOTHING, so instances sharing this database agree on it.
-- Tasks without an owner (API keys off) are signed with the instance secret instead.
-- Revoking a key keeps its row: the secret belongs to the name, as the key's tasks do.
CREATE TABLE webhook_secrets (
    owner            TEXT PRIMARY KEY NOT NULL,
    secret           TEXT NOT NULL,          -- whsec_<base64 of 32 random bytes>
    -- The secret before the last rotation: deliveries are signed with it too (a second
    -- v1 signature) until previous_until, so receivers can switch without a gap.
    previous_secret  TEXT,
    previous_until   INTEGER,
    created_at       INTEGER NOT NULL,       -- the first secret
    rotated_at       INTEGER                 -- the current secret, when it was rotated in
);
