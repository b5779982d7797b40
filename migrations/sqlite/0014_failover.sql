-- Provider failover (DARKROOM_FAILOVER): whether a task may move to the next provider of
-- the operator's chain (the request's `fallback`; NULL follows the operator's default),
-- the providers it left (comma-separated, in order), and why and when it last moved.
ALTER TABLE tasks ADD COLUMN fallback INTEGER;
ALTER TABLE tasks ADD COLUMN moved_from TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN move_reason TEXT;
ALTER TABLE tasks ADD COLUMN moved_at INTEGER;
