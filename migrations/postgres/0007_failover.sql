-- Provider failover (DARKROOM_FAILOVER): as migrations/sqlite/0014_failover.sql.
ALTER TABLE tasks ADD COLUMN fallback BIGINT;
ALTER TABLE tasks ADD COLUMN moved_from TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN move_reason TEXT;
ALTER TABLE tasks ADD COLUMN moved_at BIGINT;
