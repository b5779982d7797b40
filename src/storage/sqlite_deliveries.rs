//! [`DeliveryRepo`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::deliveries::{DeliveryOutcome, DeliveryRepo, WebhookDelivery};
use super::repo::RepoError;
use super::sqlite::SqliteRepo;
use crate::domain::TaskId;

#[async_trait]
impl DeliveryRepo for SqliteRepo {
    async fn due_webhooks(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>, RepoError> {
        let rows = sqlx::query(
            "SELECT d.id, d.task_id, d.url, d.attempts FROM webhook_deliveries d
             JOIN tasks t ON t.id = d.task_id
             WHERE d.state = 'pending' AND d.run_at <= ?
               AND t.state IN ('succeeded', 'failed', 'canceled', 'expired')
             ORDER BY d.run_at LIMIT +?",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let task_id: String = row.try_get("task_id")?;
                let attempts: i64 = row.try_get("attempts")?;
                Ok(WebhookDelivery {
                    id: row.try_get("id")?,
                    task_id: TaskId::parse(&task_id).ok_or_else(|| RepoError::Corrupt {
                        id: task_id.clone(),
                        message: "webhook delivery names an invalid task id".to_owned(),
                    })?,
                    url: row.try_get("url")?,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    async fn claim_webhook(&self, id: &str, now: i64, lease_until: i64) -> Result<bool, RepoError> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET run_at = ?, attempts = attempts + 1
             WHERE id = ? AND state = 'pending' AND run_at <= ?",
        )
        .bind(lease_until)
        .bind(id)
        .bind(now)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn extend_webhook_lease(
        &self,
        id: &str,
        held_until: i64,
        until: i64,
    ) -> Result<bool, RepoError> {
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET run_at = ?
             WHERE id = ? AND state = 'pending' AND run_at = ?",
        )
        .bind(until)
        .bind(id)
        .bind(held_until)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn finish_webhook(
        &self,
        id: &str,
        outcome: &DeliveryOutcome,
        now: i64,
    ) -> Result<(), RepoError> {
        let (state, run_at, status, error, delivered_at) = match outcome {
            DeliveryOutcome::Delivered { status } => {
                ("delivered", None, Some(*status), None, Some(now))
            }
            DeliveryOutcome::Retry {
                run_at,
                status,
                error,
            } => (
                "pending",
                Some(*run_at),
                *status,
                Some(error.as_str()),
                None,
            ),
            DeliveryOutcome::GaveUp { status, error } => {
                ("failed", None, *status, Some(error.as_str()), None)
            }
        };
        sqlx::query(
            "UPDATE webhook_deliveries SET state = ?, run_at = COALESCE(?, run_at),
                 last_status = ?, last_error = ?, delivered_at = ?
             WHERE id = ?",
        )
        .bind(state)
        .bind(run_at)
        .bind(status.map(i64::from))
        .bind(error)
        .bind(delivered_at)
        .bind(id)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        Ok(())
    }
}
