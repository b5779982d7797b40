//! The batch repository: batches (`POST /api/batches`) and their per-state counts.

use async_trait::async_trait;

use super::repo::{NewTask, RepoError};
use crate::domain::TaskState;

/// A batch as stored (`POST /api/batches`). Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub id: String,
    pub owner: Option<String>,
    pub prompt: String,
    pub webhook_url: Option<String>,
    pub total: i64,
    pub created_at: i64,
}

/// How many of a batch's tasks are in one state, and the credits they consumed.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchCount {
    pub state: TaskState,
    pub count: i64,
    pub credits: i64,
}

#[async_trait]
pub trait BatchRepo: Send + Sync + 'static {
    /// Inserts a batch and its tasks in one transaction.
    async fn insert_batch(&self, batch: &Batch, tasks: &[NewTask]) -> Result<(), RepoError>;

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, RepoError>;

    /// Batches newest first; `owner` as in [`super::TaskFilter::owner`], `before` a batch id.
    async fn list_batches(
        &self,
        owner: Option<Option<String>>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<Batch>, RepoError>;

    /// Task counts (and credits) per state for one batch id.
    async fn batch_counts(&self, id: &str) -> Result<Vec<BatchCount>, RepoError>;
}
