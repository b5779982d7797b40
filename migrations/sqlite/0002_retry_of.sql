-- A retried task is a new task; it points at the one it retries.
ALTER TABLE tasks ADD COLUMN retry_of TEXT;

-- Listing a caller's tasks newest first.
CREATE INDEX tasks_owner_id ON tasks (owner, id);
