-- The claim (src/storage/postgres.rs, `claim_queued_on`) ranked every due queued task of a
-- provider on each call (each owner's turn is a window over all of them): with 4,000
-- queued, a claim of 16 took milliseconds and the engine's throughput fell as the queue
-- grew. It now takes only each owner's first few, walking this index of queued tasks only:
-- the owners by a skip scan (one seek each), then each owner's tasks in claim order.
CREATE INDEX tasks_claim ON tasks (provider, owner, priority DESC, created_at, id)
    WHERE state = 'queued';
