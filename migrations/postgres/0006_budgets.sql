-- Daily credit budgets (storage/budgets.rs). A key's budget, by its name (keys from the
-- database and from DARKROOM_API_KEYS alike); the global one is configuration.
CREATE TABLE credit_budgets (
    owner TEXT PRIMARY KEY,
    daily_credits BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Credits counted per UTC day ('2026-12-01') and scope: '*' for every task, else the
-- key's name. Estimates are added before a create is sent and corrected by what the
-- provider reports once the task finishes.
CREATE TABLE credit_spend (
    day TEXT NOT NULL,
    scope TEXT NOT NULL,
    credits BIGINT NOT NULL,
    PRIMARY KEY (day, scope)
);

-- The estimate each unfinished task holds in credit_spend, until it is settled.
CREATE TABLE credit_reservations (
    task_id TEXT PRIMARY KEY,
    day TEXT NOT NULL,
    owner TEXT,
    credits BIGINT NOT NULL,
    at BIGINT NOT NULL
);
