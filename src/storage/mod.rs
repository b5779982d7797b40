//! Persistence: the blob store (results, uploads, task records) with every key built in
//! one place, and the repository, split by concern into one trait per file: tasks and the
//! queue ([`TaskRepo`], `repo.rs`), batches ([`BatchRepo`], `batches.rs`), webhook
//! deliveries ([`DeliveryRepo`], `deliveries.rs`), access ([`AccessRepo`], `access.rs`),
//! idempotency keys ([`IdempotencyRepo`], `idempotency.rs`), provider limits shared by every
//! instance ([`LimitsRepo`], `limits.rs`), task changes told to every instance
//! ([`ChangeFeed`], `feed.rs`), statistics ([`StatsRepo`], `stats.rs`), retention
//! ([`RetentionRepo`], `retention.rs`), daily credit budgets ([`BudgetRepo`],
//! `budgets.rs`) and copying between databases ([`CopyRepo`],
//! `copy.rs`), the last three with one SQL text for both backends.
//! Two implementations: SQLite (`sqlite*.rs`, the embedded default) and PostgreSQL
//! (`postgres*.rs`); [`open`] picks one by the database URL.
//! [`Repo`] is all of them, for components that hold one handle. `contract` holds the suites
//! every implementation must pass, written once against the traits.

pub mod access;
pub mod batches;
pub mod blob;
pub mod budgets;
pub mod contract;
pub mod copy;
mod copy_sql;
pub mod deliveries;
pub mod fault;
pub mod feed;
pub mod idempotency;
pub mod keys;
pub mod limits;
mod open;
pub mod postgres;
mod postgres_access;
mod postgres_batches;
mod postgres_deliveries;
mod postgres_idempotency;
mod postgres_limits;
mod postgres_rows;
mod postgres_wake;
pub mod repo;
pub mod retention;
pub mod sqlite;
mod sqlite_access;
mod sqlite_batches;
mod sqlite_deliveries;
mod sqlite_idempotency;
mod sqlite_limits;
pub mod sqlite_lock;
mod sqlite_rows;
mod sqlite_writer;
pub mod stats;
mod update_sql;

pub use access::{AccessRepo, ApiKeyRecord, WebhookSecretRecord};
pub use batches::{Batch, BatchCount, BatchRepo};
pub use blob::{BlobError, BlobStore};
pub use budgets::{BudgetCheck, BudgetRepo, CreditReservation, ScopeSpend};
pub use copy::{Added, Cell, CellRow, CopyRepo, Table};
pub use deliveries::{DeliveryOutcome, DeliveryRepo, WebhookDelivery};
pub use fault::StorageFault;
pub use feed::{Change, ChangeFeed, FeedEvent};
pub use idempotency::{
    IdempotencyClaim, IdempotencyCompletion, IdempotencyRepo, Reservation, StoredAnswer,
};
pub use limits::{
    CreateLimits, LimitedClaim, LimitedClaimRequest, LimitsRepo, Reserved, SharedPause,
};
pub use open::{Backend, Opened, open, redact_url, same_database, sqlite_path};
pub use repo::{NewTask, ProviderMove, RepoError, Task, TaskFilter, TaskRepo, TaskUpdate};
pub use retention::{DeletedRows, ExpiredTask, RetentionRepo, TaskInputs, UploadRow, Users};
pub use sqlite_writer::Durability;
pub use stats::StatsRepo;

/// The whole repository: every concern's trait. Implemented for any type that implements
/// them all, so a backend only implements the parts.
pub trait Repo:
    TaskRepo
    + BatchRepo
    + DeliveryRepo
    + AccessRepo
    + IdempotencyRepo
    + LimitsRepo
    + StatsRepo
    + RetentionRepo
    + CopyRepo
    + BudgetRepo
    + ChangeFeed
{
}

impl<T> Repo for T where
    T: TaskRepo
        + BatchRepo
        + DeliveryRepo
        + AccessRepo
        + IdempotencyRepo
        + LimitsRepo
        + StatsRepo
        + RetentionRepo
        + CopyRepo
        + BudgetRepo
        + ChangeFeed
{
}
