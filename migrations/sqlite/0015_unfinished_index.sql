-- GET /api/stats counts finished tasks from the rollup and the window's unfinished tasks
-- from the tasks themselves (`state IN (…unfinished…) AND created_at` in the window). With
-- no index of their own, the plan walked every task created in the window and dropped the
-- finished ones: a 30-day window at a million tasks took 250 ms. This index holds the
-- unfinished tasks only (a few, however many finished). Its predicate is the list
-- src/storage/stats.rs asks for (a unit test checks the two agree).
CREATE INDEX tasks_unfinished ON tasks (created_at)
    WHERE state IN ('queued', 'submitting', 'submitted', 'running', 'ingesting');
