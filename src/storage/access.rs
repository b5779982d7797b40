//! What authentication and owner isolation keep in the database: API keys (hashes only),
//! who uploaded which object, the count of a key's unfinished tasks, server secrets and
//! each key's webhook signing secret.
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

/// An API key's webhook signing secret (by the key's name, the owner tasks carry).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecretRecord {
    pub owner: String,
    /// `whsec_<base64>`: signs every delivery of this owner's tasks.
    pub secret: String,
    /// The secret before the last rotation, still signing deliveries until `previous_until`.
    pub previous_secret: Option<String>,
    pub previous_until: Option<i64>,
    /// When the first secret was made.
    pub created_at: i64,
    /// When the current secret replaced the previous one.
    pub rotated_at: Option<i64>,
}

impl WebhookSecretRecord {
    /// When the current secret came into use.
    pub fn current_since(&self) -> i64 {
        self.rotated_at.unwrap_or(self.created_at)
    }

    /// The previous secret if it still signs at `now`.
    pub fn previous_at(&self, now: i64) -> Option<&str> {
        match (&self.previous_secret, self.previous_until) {
            (Some(previous), Some(until)) if now < until => Some(previous),
            _ => None,
        }
    }

    /// When the previous secret stops signing, if that is still ahead at `now`.
    pub fn previous_valid_until(&self, now: i64) -> Option<i64> {
        self.previous_at(now).and(self.previous_until)
    }
}

// Secrets never reach a log line through `{:?}`.
impl std::fmt::Debug for WebhookSecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecretRecord")
            .field("owner", &self.owner)
            .field("secret", &"[redacted]")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("previous_until", &self.previous_until)
            .field("created_at", &self.created_at)
            .field("rotated_at", &self.rotated_at)
            .finish()
    }
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

    /// Forgets the record of `key` (an upload whose request failed before its answer; its
    /// object is removed too). Forgetting a key never recorded is not an error.
    async fn forget_upload(&self, key: &str) -> Result<(), RepoError>;

    /// Who uploaded `key`: `None` when unknown, `Some(None)` when uploaded without a key.
    async fn upload_owner(&self, key: &str) -> Result<Option<Option<String>>, RepoError>;

    /// Tasks of `owner` that are not finished (queued or in flight).
    async fn count_unfinished_tasks(&self, owner: &str) -> Result<u64, RepoError>;

    /// The secret called `name`, made from `fresh` and stored on first use. Every instance
    /// sharing the database gets the same value.
    async fn server_secret(&self, name: &str, fresh: &str, now: i64) -> Result<String, RepoError>;

    /// The webhook signing secret of `owner`, stored from `fresh` on first use. Race-free:
    /// concurrent first calls, on one instance or several sharing the database, all get
    /// the one value that was stored.
    async fn webhook_secret(
        &self,
        owner: &str,
        fresh: &str,
        now: i64,
    ) -> Result<WebhookSecretRecord, RepoError>;

    /// Makes `fresh` the secret of `owner` (creating the row if there is none); the secret
    /// it replaces keeps signing until `previous_until`. A secret older than that (from an
    /// earlier rotation) is dropped. Returns the record as this rotation left it.
    async fn rotate_webhook_secret(
        &self,
        owner: &str,
        fresh: &str,
        now: i64,
        previous_until: i64,
    ) -> Result<WebhookSecretRecord, RepoError>;
}
