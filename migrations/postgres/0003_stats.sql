-- GET /api/stats reads the tasks created in a window (the last hour to the last 30 days).
-- The index holds every column it reads, so the window is read from the index alone
-- (migrations/sqlite/0009_stats.sql on SQLite).
CREATE INDEX tasks_stats ON tasks
    (created_at, state, provider, error_code, credits, submitted_at, completed_at, owner);
