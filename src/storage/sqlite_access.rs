//! [`AccessRepo`] on SQLite.

use async_trait::async_trait;
use sqlx::Connection as _;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::access::{AccessRepo, ApiKeyRecord, WebhookSecretRecord};
use super::repo::RepoError;
use super::sqlite::SqliteRepo;
use crate::domain::TaskState;

fn webhook_secret_from_row(row: &SqliteRow) -> Result<WebhookSecretRecord, RepoError> {
    Ok(WebhookSecretRecord {
        owner: row.try_get("owner")?,
        secret: row.try_get("secret")?,
        previous_secret: row.try_get("previous_secret")?,
        previous_until: row.try_get("previous_until")?,
        created_at: row.try_get("created_at")?,
        rotated_at: row.try_get("rotated_at")?,
    })
}

impl SqliteRepo {
    async fn find_webhook_secret(
        &self,
        owner: &str,
    ) -> Result<Option<WebhookSecretRecord>, RepoError> {
        let row = sqlx::query("SELECT * FROM webhook_secrets WHERE owner = ?")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(webhook_secret_from_row).transpose()
    }
}

#[async_trait]
impl AccessRepo for SqliteRepo {
    async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        hint: &str,
        now: i64,
    ) -> Result<bool, RepoError> {
        let written: Result<u64, sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            // A revoked key's name may be reused; its row goes.
            sqlx::query("DELETE FROM api_keys WHERE name = ? AND revoked_at IS NOT NULL")
                .bind(name)
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO api_keys (name, key_hash, hint, created_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(key_hash)
            .bind(hint)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(inserted)
        }
        .await;
        Ok(written.map_err(|e| self.writer.failed(e))? == 1)
    }

    async fn api_key_name(&self, key_hash: &str) -> Result<Option<String>, RepoError> {
        let row =
            sqlx::query("SELECT name FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|r| r.try_get("name")).transpose()?)
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, RepoError> {
        let rows =
            sqlx::query("SELECT name, hint, created_at, revoked_at FROM api_keys ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(ApiKeyRecord {
                    name: r.try_get("name")?,
                    hint: r.try_get("hint")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    async fn revoke_api_key(&self, name: &str, now: i64) -> Result<bool, RepoError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
                .bind(now)
                .bind(name)
                .execute(&mut *self.writer.conn().await?)
                .await
                .map_err(|e| self.writer.failed(e))?;
        Ok(done.rows_affected() == 1)
    }

    async fn has_api_keys(&self) -> Result<bool, RepoError> {
        let row =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL) AS any")
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<bool, _>("any")?)
    }

    async fn record_upload(
        &self,
        key: &str,
        owner: Option<&str>,
        now: i64,
    ) -> Result<(), RepoError> {
        sqlx::query("INSERT INTO uploads (key, owner, created_at) VALUES (?, ?, ?)")
            .bind(key)
            .bind(owner)
            .bind(now)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?;
        Ok(())
    }

    async fn forget_upload(&self, key: &str) -> Result<(), RepoError> {
        sqlx::query("DELETE FROM uploads WHERE key = ?")
            .bind(key)
            .execute(&mut *self.writer.conn().await?)
            .await
            .map_err(|e| self.writer.failed(e))?;
        Ok(())
    }

    async fn upload_owner(&self, key: &str) -> Result<Option<Option<String>>, RepoError> {
        let row = sqlx::query("SELECT owner FROM uploads WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("owner")).transpose()?)
    }

    async fn count_unfinished_tasks(&self, owner: &str) -> Result<u64, RepoError> {
        let finished: Vec<&str> = [
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Canceled,
            TaskState::Expired,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM tasks WHERE owner = ? AND state NOT IN (?, ?, ?, ?)",
        )
        .bind(owner)
        .bind(finished[0])
        .bind(finished[1])
        .bind(finished[2])
        .bind(finished[3])
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn server_secret(&self, name: &str, fresh: &str, now: i64) -> Result<String, RepoError> {
        // Insert-if-absent then read: two instances starting together agree on one value.
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(fresh)
        .bind(now)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    async fn webhook_secret(
        &self,
        owner: &str,
        fresh: &str,
        now: i64,
    ) -> Result<WebhookSecretRecord, RepoError> {
        // Every delivery asks: the common case is one read, without touching the writer.
        if let Some(found) = self.find_webhook_secret(owner).await? {
            return Ok(found);
        }
        // Insert-if-absent, then read back what won: concurrent first calls (here or on
        // another instance) all return the one stored value.
        sqlx::query(
            "INSERT INTO webhook_secrets (owner, secret, created_at) VALUES (?, ?, ?)
             ON CONFLICT (owner) DO NOTHING",
        )
        .bind(owner)
        .bind(fresh)
        .bind(now)
        .execute(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        let row = sqlx::query("SELECT * FROM webhook_secrets WHERE owner = ?")
            .bind(owner)
            .fetch_one(&self.pool)
            .await?;
        webhook_secret_from_row(&row)
    }

    async fn rotate_webhook_secret(
        &self,
        owner: &str,
        fresh: &str,
        now: i64,
        previous_until: i64,
    ) -> Result<WebhookSecretRecord, RepoError> {
        // One statement: the secret being replaced becomes the previous one atomically, so
        // two rotations at once cannot both keep the same previous secret.
        let row = sqlx::query(
            "INSERT INTO webhook_secrets (owner, secret, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner) DO UPDATE SET
                 previous_secret = webhook_secrets.secret,
                 previous_until = ?4,
                 secret = excluded.secret,
                 rotated_at = ?3
             RETURNING *",
        )
        .bind(owner)
        .bind(fresh)
        .bind(now)
        .bind(previous_until)
        .fetch_one(&mut *self.writer.conn().await?)
        .await
        .map_err(|e| self.writer.failed(e))?;
        webhook_secret_from_row(&row)
    }
}

// The behaviour every backend shares is checked by `storage::contract` (run on SQLite by
// `tests/it/queue.rs`); what is SQLite's own stays here.
#[cfg(test)]
mod tests {
    use super::*;

    /// Two instances on one database asking for a key's secret for the first time, at the
    /// same moment, each with a fresh candidate: both get the one that was stored.
    #[tokio::test]
    async fn concurrent_first_webhook_secret_calls_agree() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/shared.db", dir.path().display());
        let one = SqliteRepo::connect(&url, 4, crate::storage::Durability::Normal)
            .await
            .unwrap();
        let two = SqliteRepo::connect(&url, 4, crate::storage::Durability::Normal)
            .await
            .unwrap();
        for round in 0..20 {
            let owner = format!("key-{round}");
            let (a, b, c) = tokio::join!(
                one.webhook_secret(&owner, "whsec_first", 1),
                two.webhook_secret(&owner, "whsec_second", 2),
                one.webhook_secret(&owner, "whsec_third", 3),
            );
            let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
            assert_eq!(a, b, "round {round}");
            assert_eq!(a, c, "round {round}");
            assert!(["whsec_first", "whsec_second", "whsec_third"].contains(&a.secret.as_str()));
            // Later calls keep it.
            let again = two.webhook_secret(&owner, "whsec_later", 9).await.unwrap();
            assert_eq!(again, a);
        }
    }
}
