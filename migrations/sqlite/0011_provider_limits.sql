-- A provider's limits as every instance and every restart sees them (storage/limits.rs).
-- Creates reserved in the sliding window: one row per claim, forgotten once out of the
-- window.
CREATE TABLE provider_creates (
    provider TEXT NOT NULL,
    at INTEGER NOT NULL,
    slots INTEGER NOT NULL
);
CREATE INDEX provider_creates_window ON provider_creates (provider, at);

-- The pause after a 429 or a 402: submissions to the provider wait until until_ms.
CREATE TABLE provider_pauses (
    provider TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL
);
