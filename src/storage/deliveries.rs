//! The webhook delivery repository: deliveries due once their task is final, claimed for
//! one attempt at a time and finished with the attempt's outcome.

use async_trait::async_trait;

use super::repo::RepoError;
use crate::domain::TaskId;

/// A webhook delivery that is due: its task is final and its next attempt is due.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookDelivery {
    /// The `webhook-id` (`msg_…`), the same on every attempt.
    pub id: String,
    pub task_id: TaskId,
    pub url: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryOutcome {
    Delivered {
        status: u16,
    },
    Retry {
        run_at: i64,
        status: Option<u16>,
        error: String,
    },
    GaveUp {
        status: Option<u16>,
        error: String,
    },
}

#[async_trait]
pub trait DeliveryRepo: Send + Sync + 'static {
    /// Deliveries whose task is final and whose next attempt is due at `now`.
    async fn due_webhooks(&self, now: i64, limit: usize)
    -> Result<Vec<WebhookDelivery>, RepoError>;

    /// Takes a due delivery for one attempt (compare-and-set on `run_at`, which becomes
    /// `lease_until`): false when another worker took it first.
    async fn claim_webhook(&self, id: &str, now: i64, lease_until: i64) -> Result<bool, RepoError>;

    /// Extends the lease of an attempt that is still running, from `held_until` (what its
    /// claim or last extension set) to `until`: false when the lease was lost (it ran out
    /// and another worker claimed the delivery, or the attempt was recorded).
    async fn extend_webhook_lease(
        &self,
        id: &str,
        held_until: i64,
        until: i64,
    ) -> Result<bool, RepoError>;

    /// Records an attempt's outcome.
    async fn finish_webhook(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: i64,
    ) -> Result<(), RepoError>;
}
