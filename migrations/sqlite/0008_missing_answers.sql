-- "No such task" answers from the provider in a row, for a task it had accepted: a few in
-- a row end the task (`provider_task_missing`) instead of polling until its deadline.
ALTER TABLE tasks ADD COLUMN missing_answers INTEGER NOT NULL DEFAULT 0;
