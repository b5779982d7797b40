//! Every metric darkroom exports: its name, kind, labels and meaning, declared once. The
//! recorder describes each from [`CATALOGUE`], `docs/OPERATIONS.md` lists the same names
//! (a test checks it), and nothing else spells a metric's name.

/// What a metric is to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: name, kind, its labels (for the docs) and a sentence.
#[derive(Clone, Copy, Debug)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! catalogue {
    ($($const:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)*) => {
        $(pub const $const: &str = $name;)*
        /// Every metric, in the order the docs list them.
        pub const CATALOGUE: &[Described] = &[
            $(Described { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help },)*
        ];
    };
}

catalogue! {
    // Tasks.
    TASKS = "darkroom_tasks", Gauge, ["provider", "state"],
        "Unfinished tasks by provider and state (queued, submitting, submitted, running, ingesting), counted in the database at each scrape.";
    TASKS_FINISHED = "darkroom_tasks_finished_total", Counter, ["provider", "outcome"],
        "Tasks that reached a final state, by provider and outcome (succeeded, failed, canceled, expired).";
    TASK_FAILURES = "darkroom_task_failures_total", Counter, ["provider", "code"],
        "Tasks that failed or expired, by provider and stable error code.";
    TASKS_EXPIRED = "darkroom_tasks_expired_total", Counter, ["provider"],
        "Tasks that expired: no result from the provider within the task deadline.";
    TASK_STAGE_SECONDS = "darkroom_task_stage_seconds", Histogram, ["provider", "stage"],
        "Time spent per stage: queued_to_submitted, submitted_to_answer (callback or poll), answer_to_stored, end_to_end (created to succeeded).";
    CREDITS = "darkroom_credits_total", Counter, ["provider"],
        "Credits the provider reported for succeeded tasks.";
    // Budgets.
    BUDGET_DAILY_CREDITS = "darkroom_budget_daily_credits", Gauge, [],
        "The global daily credit budget (DARKROOM_DAILY_CREDIT_BUDGET); 0: none.";
    BUDGET_SPENT_CREDITS = "darkroom_budget_spent_credits", Gauge, [],
        "Credits counted against budgets today (UTC), every task together: estimates of tasks not yet finished, what finished tasks used.";
    BUDGET_KEYS_EXHAUSTED = "darkroom_budget_keys_exhausted", Gauge, [],
        "Keys whose daily credit budget is spent today.";
    BUDGET_REFUSALS = "darkroom_budget_refusals_total", Counter, ["scope"],
        "Creates held back because a daily credit budget was spent, by budget: global or key.";
    // Providers.
    PROVIDER_REQUESTS = "darkroom_provider_requests_total", Counter, ["provider", "operation", "status"],
        "Requests to a provider by operation (create, query) and answer: 2xx, 4xx, 5xx by the provider's code, timeout (sent, no answer), unreachable (nothing sent).";
    PROVIDER_REQUEST_SECONDS = "darkroom_provider_request_seconds", Histogram, ["provider", "operation"],
        "Latency of requests to a provider, by operation.";
    PROVIDER_RATE_LIMITED = "darkroom_provider_rate_limited_total", Counter, ["provider"],
        "429 answers from a provider.";
    PROVIDER_PAUSES = "darkroom_provider_pauses_total", Counter, ["provider", "code"],
        "Pauses of submission to a provider, by cause: 429 (rate limited), 402 (no credits), credit_floor (the balance read below the configured floor) or failing (failed creates in a row, with failover on).";
    PROVIDER_FAILOVERS = "darkroom_provider_failovers_total", Counter, ["from", "to", "reason"],
        "Tasks moved to another provider by the failover policy, by cause: credits, credit_floor, failing or attempts.";
    PROVIDER_PAUSED = "darkroom_provider_paused", Gauge, ["provider"],
        "1 while submission to a provider is paused (429, 402, credit_floor), else 0.";
    PROVIDER_CREDITS = "darkroom_provider_credits", Gauge, ["provider"],
        "The provider's credit balance as this instance last read it (KIE's chat/credit: periodically and after a 402); absent until read.";
    PROVIDER_UNREACHABLE = "darkroom_provider_unreachable", Gauge, ["provider"],
        "1 while a provider cannot be reached (its circuit is open), else 0.";
    PROVIDER_CREATE_SLOTS_IN_USE = "darkroom_provider_create_slots_in_use", Gauge, ["provider"],
        "Creates counted in the provider's current rate window.";
    PROVIDER_CREATE_SLOTS = "darkroom_provider_create_slots", Gauge, ["provider"],
        "Creates the provider's rate window allows (0: no limit).";
    UNCONFIRMED_CREATES = "darkroom_unconfirmed_creates_total", Counter, ["provider"],
        "Creates sent without an answer (timeout or reset after sending), left to a callback or the reconciler.";
    RECONCILER_POLLS = "darkroom_reconciler_polls_total", Counter, ["provider"],
        "Status queries the reconciler sent for tasks whose answer was due.";
    // Ingest.
    INGEST_BYTES = "darkroom_ingest_bytes", Histogram, ["provider"],
        "Size of each stored result image, bytes.";
    INGEST_SECONDS = "darkroom_ingest_seconds", Histogram, ["provider"],
        "Time to fetch, check and store one result image.";
    // Webhooks and live clients.
    WEBHOOKS = "darkroom_webhooks_total", Counter, ["outcome"],
        "Webhook delivery attempts by outcome: delivered, retry (failed, tried again later), gave_up.";
    LIVE_CLIENTS = "darkroom_live_clients", Gauge, ["transport"],
        "Clients connected to the live streams, by transport (sse, websocket).";
    // HTTP.
    HTTP_REQUESTS = "darkroom_http_requests_total", Counter, ["route", "method", "status"],
        "HTTP requests by route template (never the raw path or query), method and status.";
    HTTP_REQUEST_SECONDS = "darkroom_http_request_seconds", Histogram, ["route", "method"],
        "HTTP request latency (to the response's head) by route template and method.";
    // The process.
    BUILD_INFO = "darkroom_build_info", Gauge, ["version"],
        "Always 1; the version of this darkroom.";
    BACKEND_INFO = "darkroom_backend_info", Gauge, ["database", "bucket"],
        "Always 1; the database (sqlite, postgres) and bucket (local, s3, memory) this instance uses.";
    UPTIME_SECONDS = "darkroom_uptime_seconds", Gauge, [],
        "Seconds since this instance started.";
}

/// The states counted by [`TASKS`].
pub const UNFINISHED_STATES: [&str; 5] =
    ["queued", "submitting", "submitted", "running", "ingesting"];

/// Stages of [`TASK_STAGE_SECONDS`].
pub mod stage {
    pub const QUEUED_TO_SUBMITTED: &str = "queued_to_submitted";
    pub const SUBMITTED_TO_ANSWER: &str = "submitted_to_answer";
    pub const ANSWER_TO_STORED: &str = "answer_to_stored";
    pub const END_TO_END: &str = "end_to_end";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_counters_end_in_total() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOGUE {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("darkroom_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn the_operations_guide_lists_every_metric() {
        let guide = include_str!("../../docs/OPERATIONS.md");
        for m in CATALOGUE {
            assert!(
                guide.contains(&format!("| `{}` |", m.name)),
                "docs/OPERATIONS.md (Monitoring) does not list {}",
                m.name
            );
        }
    }
}
