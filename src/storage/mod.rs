//! Persistence: the blob store (results, uploads, task records) with every key built in
//! one place, and the task repository.

pub mod access;
pub mod blob;
pub mod fault;
pub mod keys;
pub mod repo;
pub mod sqlite;
mod sqlite_access;
mod sqlite_rows;
mod sqlite_writer;

pub use access::{AccessRepo, ApiKeyRecord, WebhookSecretRecord};
pub use blob::{BlobError, BlobStore};
pub use fault::StorageFault;
pub use repo::{
    Batch, BatchCount, DeliveryOutcome, NewTask, RepoError, Task, TaskFilter, TaskRepo, TaskUpdate,
    WebhookDelivery,
};
pub use sqlite_writer::Durability;
