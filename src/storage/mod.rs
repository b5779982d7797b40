//! Persistence: the blob store (results, uploads, task records) with every key built in
//! one place, and the repository, split by concern into one trait per file: tasks and the
//! queue ([`TaskRepo`], `repo.rs`), batches ([`BatchRepo`], `batches.rs`), webhook
//! deliveries ([`DeliveryRepo`], `deliveries.rs`) and access ([`AccessRepo`], `access.rs`).
//! Two implementations: SQLite (`sqlite*.rs`, the embedded default) and PostgreSQL
//! (`postgres*.rs`); [`open`] picks one by the database URL.
//! [`Repo`] is all four, for components that hold one handle. `contract` holds the suites
//! every implementation must pass, written once against the traits.

pub mod access;
pub mod batches;
pub mod blob;
pub mod contract;
pub mod deliveries;
pub mod fault;
pub mod keys;
mod open;
pub mod postgres;
mod postgres_access;
mod postgres_batches;
mod postgres_deliveries;
mod postgres_rows;
mod postgres_wake;
pub mod repo;
pub mod sqlite;
mod sqlite_access;
mod sqlite_batches;
mod sqlite_deliveries;
mod sqlite_rows;
mod sqlite_writer;
mod update_sql;

pub use access::{AccessRepo, ApiKeyRecord, WebhookSecretRecord};
pub use batches::{Batch, BatchCount, BatchRepo};
pub use blob::{BlobError, BlobStore};
pub use deliveries::{DeliveryOutcome, DeliveryRepo, WebhookDelivery};
pub use fault::StorageFault;
pub use open::{Backend, Opened, open, redact_url};
pub use repo::{NewTask, RepoError, Task, TaskFilter, TaskRepo, TaskUpdate};
pub use sqlite_writer::Durability;

/// The whole repository: every concern's trait. Implemented for any type that implements
/// all four, so a backend only implements the parts.
pub trait Repo: TaskRepo + BatchRepo + DeliveryRepo + AccessRepo {}

impl<T: TaskRepo + BatchRepo + DeliveryRepo + AccessRepo> Repo for T {}
