//! [`AccessRepo`] on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use super::access::{AccessRepo, ApiKeyRecord};
use super::repo::RepoError;
use super::sqlite::SqliteRepo;
use crate::domain::TaskState;

#[async_trait]
impl AccessRepo for SqliteRepo {
    async fn create_api_key(
        &self,
        name: &str,
        key_hash: &str,
        hint: &str,
        now: i64,
    ) -> Result<bool, RepoError> {
        let mut tx = self.writer.begin().await?;
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
        Ok(inserted == 1)
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
                .execute(&self.writer)
                .await?;
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
            .execute(&self.writer)
            .await?;
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
        .execute(&self.writer)
        .await?;
        let row = sqlx::query("SELECT value FROM server_secrets WHERE name = ?")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_uploads_and_secrets() {
        let repo = SqliteRepo::in_memory().await.unwrap();
        assert!(!repo.has_api_keys().await.unwrap());
        assert!(
            repo.create_api_key("alice", "h1", "dk_abc", 1)
                .await
                .unwrap()
        );
        assert!(
            !repo
                .create_api_key("alice", "h2", "dk_def", 2)
                .await
                .unwrap()
        );
        assert!(repo.has_api_keys().await.unwrap());
        assert_eq!(
            repo.api_key_name("h1").await.unwrap().as_deref(),
            Some("alice")
        );
        assert_eq!(repo.api_key_name("h2").await.unwrap(), None);
        assert!(repo.revoke_api_key("alice", 3).await.unwrap());
        assert!(!repo.revoke_api_key("alice", 4).await.unwrap());
        assert_eq!(repo.api_key_name("h1").await.unwrap(), None);
        assert!(!repo.has_api_keys().await.unwrap());
        // A revoked name can be used again.
        assert!(
            repo.create_api_key("alice", "h3", "dk_ghi", 5)
                .await
                .unwrap()
        );
        assert_eq!(repo.list_api_keys().await.unwrap().len(), 1);

        repo.record_upload("uploads/a.png", Some("alice"), 1)
            .await
            .unwrap();
        repo.record_upload("uploads/b.png", None, 1).await.unwrap();
        assert_eq!(
            repo.upload_owner("uploads/a.png").await.unwrap(),
            Some(Some("alice".to_owned()))
        );
        assert_eq!(
            repo.upload_owner("uploads/b.png").await.unwrap(),
            Some(None)
        );
        assert_eq!(repo.upload_owner("uploads/c.png").await.unwrap(), None);
        assert_eq!(repo.count_unfinished_tasks("alice").await.unwrap(), 0);

        let first = repo.server_secret("files", "one", 1).await.unwrap();
        let second = repo.server_secret("files", "two", 2).await.unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("one", "one"));
    }
}
