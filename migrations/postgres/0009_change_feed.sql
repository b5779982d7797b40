-- Every task an instance inserts or moves to another state is announced to the other
-- instances sharing this database (`NOTIFY darkroom_events`, payload
-- `origin task_id state`), from the same transaction as the change. PostgreSQL delivers a
-- notification when its transaction commits and never when it rolls back, so a change and
-- its announcement cannot part: before this trigger the instance sent the announcement
-- itself after the commit, and one killed in between left the others' streams without
-- that change.
--
-- `origin` is the writing connection's `darkroom.origin` setting (each instance's pool sets
-- its own at connect), so an instance can skip what it announced itself; a change made
-- from elsewhere (psql, a tool) is announced with the origin `-`.
CREATE FUNCTION tasks_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'darkroom_events',
        COALESCE(NULLIF(current_setting('darkroom.origin', true), ''), '-')
            || ' ' || NEW.id || ' ' || NEW.state
    );
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_announce_insert AFTER INSERT ON tasks
FOR EACH ROW EXECUTE FUNCTION tasks_announce_change();

CREATE TRIGGER tasks_announce_state AFTER UPDATE OF state ON tasks
FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
EXECUTE FUNCTION tasks_announce_change();
