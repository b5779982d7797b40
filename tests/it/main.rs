//! darkroom's integration tests: one binary, one module per area, one shared harness.
//!
//! Run one area with `cargo test --test it <module>::` (for example
//! `cargo test --test it storage_faults:: -- --nocapture`); docs/TESTING.md says how the
//! suite is organised and what each printed figure means. Tests that measure the whole
//! process (peak memory, the global log subscriber) run alone in a child process of this
//! binary ([`harness::alone`]), so other tests running beside them cannot skew them.

mod harness;

mod bad_input;
mod batches;
mod budgets;
mod cli;
mod client;
mod cluster;
mod crash;
mod credits;
mod deploy;
mod doc_links;
mod failover;
mod fuzz_parsers;
mod gemini;
mod idempotency;
mod jobs;
mod live;
mod logs;
mod metrics;
mod migrate_db;
mod no_secrets_in_logs;
mod openapi;
mod outages;
mod pipeline;
mod provider_faults;
mod queue;
mod reindex;
mod reliability;
mod retention;
mod security;
mod shared_limits;
mod slow_clients;
mod ssrf;
mod stats;
mod status_polls;
mod storage;
mod storage_faults;
mod storage_faults_bucket;
mod storage_large;
mod tasks_api;
mod upload_bombs;
mod webhooks;
