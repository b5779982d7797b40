//! What authentication and owner isolation keep in the database: API keys (hashes only),
//! who uploaded which object, the count of a key's unfinished tasks, and server secrets.
//! A trait of its own beside `TaskRepo`, so the task queue's contract stays small.

use async_trait::async_trait;

use super::RepoError;

/// A stored API key, without the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub name: String,
    pub hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[async_trait]
pub trait AccessRepo: Send + Sync + 'static {
    /// Stores a new key. `false` when the name is taken by a key that is not revoked.
    async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        hint: &str,
        now: i64,
    ) -> Result<bool, RepoError>;

    /// The name of the live key with this hash.
    async fn api_key_name(&self, key_hash: &str) -> Result<Option<String>, RepoError>;

    /// Every key, live and revoked, by name.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, RepoError>;

    /// Revokes the live key called `name`; `false` when there is none.
    async fn revoke_api_key(&self, name: &str, now: i64) -> Result<bool, RepoError>;

    /// Whether any live key exists (authentication turns on at start when one does).
    async fn has_api_keys(&self) -> Result<bool, RepoError>;

    /// Records who uploaded `key` (`None` when authentication is off).
    async fn record_upload(
        &self,
        key: &str,
        owner: Option<&str>,
        now: i64,
    ) -> Result<(), RepoError>;

    /// Who uploaded `key`: `None` when unknown, `Some(None)` when uploaded without a key.
    async fn upload_owner(&self, key: &str) -> Result<Option<Option<String>>, RepoError>;

    /// Tasks of `owner` that are not finished (queued or in flight).
    async fn count_unfinished_tasks(&self, owner: &str) -> Result<u64, RepoError>;

    /// The secret called `name`, made from `fresh` and stored on first use. Every instance
    /// sharing the database gets the same value.
    async fn server_secret(&self, name: &str, fresh: &str, now: i64) -> Result<String, RepoError>;
}
