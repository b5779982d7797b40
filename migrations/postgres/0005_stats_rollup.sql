-- GET /api/stats reads a rollup instead of the tasks: what every task in a final state
-- (succeeded, failed, canceled, expired) counts for, summed per bucket of its creation time
-- at three widths (5 minutes for the 1h window, an hour for 24h, a UTC day for 7d and 30d),
-- per owner. Unfinished tasks are few and are read from the tasks themselves. The rollup is
-- kept by triggers on tasks, in the transaction of the write that moves a task: a task
-- counts once, whichever path finished it (a guarded update, a restore by reindex), a
-- change to a finished task's counted columns moves its count, and a deleted task (by
-- DELETE /api/tasks/{id} or the retention sweep) counts no more. The rows are backfilled
-- below from the tasks already stored. migrations/sqlite/0012_stats_rollup.sql is the
-- same on SQLite.

-- Upper bounds (ms) of the duration histogram's buckets: every millisecond to 10 ms, then
-- the R20 series (1, 1.12, 1.25, 1.4, 1.6, 1.8, 2, 2.24, 2.5, 2.8, 3.15, 3.55, 4, 4.5, 5,
-- 5.6, 6.3, 7.1, 8, 9 x 10^n ms, rounded up to whole ms) to 10^10 ms (about 115 days).
-- A duration counts in the first bucket whose bound is at least the duration (longer
-- ones in the last). src/domain/stats.rs holds the same list (the contract suite checks).
CREATE TABLE stats_duration_buckets (
    le_ms BIGINT PRIMARY KEY
);
INSERT INTO stats_duration_buckets (le_ms) VALUES
    (0), (1), (2), (3), (4), (5), (6), (7), (8), (9),
    (10), (12), (13), (14), (16), (18), (20), (23), (25), (28),
    (32), (36), (40), (45), (50), (56), (63), (71), (80), (90),
    (100), (112), (125), (140), (160), (180), (200), (224), (250), (280),
    (315), (355), (400), (450), (500), (560), (630), (710), (800), (900),
    (1000), (1120), (1250), (1400), (1600), (1800), (2000), (2240), (2500), (2800),
    (3150), (3550), (4000), (4500), (5000), (5600), (6300), (7100), (8000), (9000),
    (10000), (11200), (12500), (14000), (16000), (18000), (20000), (22400), (25000), (28000),
    (31500), (35500), (40000), (45000), (50000), (56000), (63000), (71000), (80000), (90000),
    (100000), (112000), (125000), (140000), (160000), (180000), (200000), (224000), (250000), (280000),
    (315000), (355000), (400000), (450000), (500000), (560000), (630000), (710000), (800000), (900000),
    (1000000), (1120000), (1250000), (1400000), (1600000), (1800000), (2000000), (2240000), (2500000), (2800000),
    (3150000), (3550000), (4000000), (4500000), (5000000), (5600000), (6300000), (7100000), (8000000), (9000000),
    (10000000), (11200000), (12500000), (14000000), (16000000), (18000000), (20000000), (22400000), (25000000), (28000000),
    (31500000), (35500000), (40000000), (45000000), (50000000), (56000000), (63000000), (71000000), (80000000), (90000000),
    (100000000), (112000000), (125000000), (140000000), (160000000), (180000000), (200000000), (224000000), (250000000), (280000000),
    (315000000), (355000000), (400000000), (450000000), (500000000), (560000000), (630000000), (710000000), (800000000), (900000000),
    (1000000000), (1120000000), (1250000000), (1400000000), (1600000000), (1800000000), (2000000000), (2240000000), (2500000000), (2800000000),
    (3150000000), (3550000000), (4000000000), (4500000000), (5000000000), (5600000000), (6300000000), (7100000000), (8000000000), (9000000000),
    (10000000000);


-- The widths kept, and for how long a row of the two fine ones is worth keeping (the 1h
-- window reads 5-minute rows of the last 65 minutes, the 24h window hourly rows of the last
-- 25 hours; day rows are kept for good). Rows older than that are dropped by the triggers
-- below, on one write in 64 (drawn at random): a delete on every write would cost
-- PostgreSQL a scan over the index entries of the rows deleted since its last vacuum.
CREATE VIEW stats_grains (grain_ms, keep_ms) AS
    VALUES (300000::BIGINT, 10800000::BIGINT), (3600000, 172800000), (86400000, NULL);

-- Finished tasks by the start of their creation's bucket (`slot`, Unix ms), owner ('' for
-- none), provider, state and error code ('' for none, always '' when succeeded): how many
-- and the credits charged for them.
CREATE TABLE stats_counts (
    grain_ms   BIGINT NOT NULL,
    slot       BIGINT NOT NULL,
    owner      TEXT COLLATE "C" NOT NULL,
    provider   TEXT NOT NULL,
    state      TEXT NOT NULL,
    error_code TEXT NOT NULL,
    tasks      BIGINT NOT NULL,
    credits    BIGINT NOT NULL,
    PRIMARY KEY (grain_ms, slot, owner, provider, state, error_code)
);

-- Finished tasks' stage durations (queue: created -> handed to the provider; provider:
-- handed over -> results stored, and end_to_end: created -> results stored, both only for
-- tasks that succeeded), counted per histogram bucket (`le_ms`, its upper bound).
CREATE TABLE stats_durations (
    grain_ms BIGINT NOT NULL,
    slot     BIGINT NOT NULL,
    owner    TEXT COLLATE "C" NOT NULL,
    stage    TEXT NOT NULL,
    le_ms    BIGINT NOT NULL,
    tasks    BIGINT NOT NULL,
    PRIMARY KEY (grain_ms, slot, owner, stage, le_ms)
);

-- Adds what the finished task `t` counts for (`sign` 1), or takes it out (-1): its counts
-- and its stage durations at every width, in one statement. `now` is the time of the
-- write: fine rows older than their width is kept are not written.
CREATE FUNCTION stats_count_task(t tasks, sign BIGINT, now BIGINT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    WITH counted AS (
        INSERT INTO stats_counts (grain_ms, slot, owner, provider, state, error_code, tasks, credits)
        SELECT g.grain_ms, t.created_at - t.created_at % g.grain_ms, COALESCE(t.owner, ''),
               t.provider, t.state,
               CASE WHEN t.state = 'succeeded' THEN '' ELSE COALESCE(t.error_code, '') END,
               sign, sign * COALESCE(t.credits, 0)
        FROM stats_grains AS g
        WHERE g.keep_ms IS NULL OR t.created_at - t.created_at % g.grain_ms >= now - g.keep_ms
        ON CONFLICT (grain_ms, slot, owner, provider, state, error_code)
        DO UPDATE SET tasks = stats_counts.tasks + excluded.tasks,
                      credits = stats_counts.credits + excluded.credits
    )
    INSERT INTO stats_durations (grain_ms, slot, owner, stage, le_ms, tasks)
    SELECT g.grain_ms, t.created_at - t.created_at % g.grain_ms, COALESCE(t.owner, ''),
           d.stage, d.le_ms, sign
    FROM stats_grains AS g, (
        SELECT s.stage, COALESCE((SELECT MIN(le_ms) FROM stats_duration_buckets WHERE le_ms >= s.ms), 10000000000) AS le_ms
        FROM (VALUES ('queue', t.submitted_at - t.created_at),
                     ('provider', CASE WHEN t.state = 'succeeded' THEN t.completed_at - t.submitted_at END),
                     ('end_to_end', CASE WHEN t.state = 'succeeded' THEN t.completed_at - t.created_at END))
             AS s (stage, ms)
        WHERE s.ms IS NOT NULL) AS d
    WHERE g.keep_ms IS NULL OR t.created_at - t.created_at % g.grain_ms >= now - g.keep_ms
    ON CONFLICT (grain_ms, slot, owner, stage, le_ms)
    DO UPDATE SET tasks = stats_durations.tasks + excluded.tasks;
END
$$;

-- Drops the fine rows too old to be read at `now`, on one write in 64 (at random).
CREATE FUNCTION stats_prune(now BIGINT) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF random() < 1.0 / 64 THEN
        DELETE FROM stats_counts WHERE (grain_ms = 300000 AND slot < now - 10800000)
                                    OR (grain_ms = 3600000 AND slot < now - 172800000);
        DELETE FROM stats_durations WHERE (grain_ms = 300000 AND slot < now - 10800000)
                                       OR (grain_ms = 3600000 AND slot < now - 172800000);
    END IF;
END
$$;

-- A task reaching a final state, or stored in one (reindex restores finished tasks so,
-- oldest first).
CREATE FUNCTION stats_task_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_count_task(NEW, 1, NEW.updated_at);
    PERFORM stats_prune(NEW.updated_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER stats_task_finished
AFTER UPDATE OF state ON tasks
FOR EACH ROW WHEN (OLD.state NOT IN ('succeeded', 'failed', 'canceled', 'expired') AND NEW.state IN ('succeeded', 'failed', 'canceled', 'expired'))
EXECUTE FUNCTION stats_task_finished();

CREATE TRIGGER stats_task_inserted AFTER INSERT ON tasks
FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'failed', 'canceled', 'expired'))
EXECUTE FUNCTION stats_task_finished();

-- A finished task whose counted columns change (rare): its old figures are taken out and
-- its new ones put in.
CREATE FUNCTION stats_task_corrected() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_count_task(OLD, -1, NEW.updated_at);
    IF NEW.state IN ('succeeded', 'failed', 'canceled', 'expired') THEN
        PERFORM stats_count_task(NEW, 1, NEW.updated_at);
    END IF;
    PERFORM stats_prune(NEW.updated_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER stats_task_corrected
AFTER UPDATE OF state, owner, provider, error_code, credits, created_at, submitted_at, completed_at
ON tasks
FOR EACH ROW
WHEN (OLD.state IN ('succeeded', 'failed', 'canceled', 'expired')
      AND (OLD.state, OLD.owner, OLD.provider, OLD.error_code, OLD.credits, OLD.created_at, OLD.submitted_at, OLD.completed_at)
          IS DISTINCT FROM
          (NEW.state, NEW.owner, NEW.provider, NEW.error_code, NEW.credits, NEW.created_at, NEW.submitted_at, NEW.completed_at))
EXECUTE FUNCTION stats_task_corrected();

-- A finished task deleted (DELETE /api/tasks/{id}, the retention sweep): it counts no more.
-- Its fine rows are those of its own time (a row since dropped is not read again).
CREATE FUNCTION stats_task_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM stats_count_task(OLD, -1, OLD.updated_at);
    RETURN NULL;
END
$$;

CREATE TRIGGER stats_task_deleted AFTER DELETE ON tasks
FOR EACH ROW WHEN (OLD.state IN ('succeeded', 'failed', 'canceled', 'expired'))
EXECUTE FUNCTION stats_task_deleted();

-- The tasks already stored. The fine widths only for the slots still worth keeping now.
INSERT INTO stats_counts (grain_ms, slot, owner, provider, state, error_code, tasks, credits)
SELECT g.grain_ms, t.created_at - t.created_at % g.grain_ms, COALESCE(t.owner, ''),
       t.provider, t.state,
       CASE WHEN t.state = 'succeeded' THEN '' ELSE COALESCE(t.error_code, '') END,
       COUNT(*), COALESCE(SUM(t.credits), 0)
FROM tasks AS t, stats_grains AS g
WHERE t.state IN ('succeeded', 'failed', 'canceled', 'expired')
  AND (g.keep_ms IS NULL OR t.created_at - t.created_at % g.grain_ms >= (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - g.keep_ms)
GROUP BY 1, 2, 3, 4, 5, 6;

INSERT INTO stats_durations (grain_ms, slot, owner, stage, le_ms, tasks)
WITH durations AS MATERIALIZED (
    SELECT d.created_at, d.owner, d.stage,
           COALESCE((SELECT MIN(b.le_ms) FROM stats_duration_buckets AS b
                     WHERE b.le_ms >= d.ms), 10000000000) AS le_ms
    FROM (SELECT created_at, COALESCE(owner, '') AS owner, 'queue' AS stage,
                 submitted_at - created_at AS ms
          FROM tasks WHERE state IN ('succeeded', 'failed', 'canceled', 'expired') AND submitted_at IS NOT NULL
          UNION ALL
          SELECT created_at, COALESCE(owner, ''), 'provider', completed_at - submitted_at
          FROM tasks WHERE state = 'succeeded' AND completed_at IS NOT NULL
                       AND submitted_at IS NOT NULL
          UNION ALL
          SELECT created_at, COALESCE(owner, ''), 'end_to_end', completed_at - created_at
          FROM tasks WHERE state = 'succeeded' AND completed_at IS NOT NULL) AS d
)
SELECT g.grain_ms, t.created_at - t.created_at % g.grain_ms, t.owner, t.stage, t.le_ms, COUNT(*)
FROM durations AS t, stats_grains AS g
WHERE g.keep_ms IS NULL OR t.created_at - t.created_at % g.grain_ms >= (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - g.keep_ms
GROUP BY 1, 2, 3, 4, 5;

-- The rollup answers what this covering index of the window's columns was for; without it
-- every change of a task's state writes one wide index entry less. The retention sweep's
-- pages in creation order (kept_task_inputs) keep a narrow index of their own, which no
-- change of state touches on SQLite.
DROP INDEX tasks_stats;
CREATE INDEX tasks_created ON tasks (created_at, id);
