-- GET /api/stats reads the tasks created in a window (the last hour to the last 30 days).
-- The index holds every column it reads, so the window is read from the index alone,
-- without a lookup of each task's row.
CREATE INDEX tasks_stats ON tasks
    (created_at, state, provider, error_code, credits, submitted_at, completed_at, owner);
