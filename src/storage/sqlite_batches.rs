//! [`BatchRepo`] on SQLite.

use sqlx::Connection as _;
use std::str::FromStr;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::batches::{Batch, BatchCount, BatchRepo};
use super::repo::{NewTask, RepoError};
use super::sqlite::SqliteRepo;
use super::sqlite_rows::{batch_from_row, insert_tasks};
use crate::domain::TaskState;

/// Inserts the batch row inside an open transaction (its tasks follow in the same one).
pub(super) async fn insert_batch_row(
    conn: &mut sqlx::SqliteConnection,
    batch: &Batch,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO batches (id, owner, prompt, webhook_url, total, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(&batch.id)
    .bind(&batch.owner)
    .bind(&batch.prompt)
    .bind(&batch.webhook_url)
    .bind(batch.total)
    .bind(batch.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl BatchRepo for SqliteRepo {
    async fn insert_batch(&self, batch: &Batch, tasks: &[NewTask]) -> Result<(), RepoError> {
        let written: Result<(), sqlx::Error> = async {
            let mut conn = self.writer.conn().await?;
            let mut tx = conn.begin().await?;
            insert_batch_row(&mut tx, batch).await?;
            insert_tasks(&mut tx, tasks).await?;
            tx.commit().await
        }
        .await;
        written.map_err(|e| self.writer.failed(e))
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, RepoError> {
        let row = sqlx::query("SELECT * FROM batches WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(batch_from_row).transpose()
    }

    async fn list_batches(
        &self,
        owner: Option<Option<String>>,
        before: Option<String>,
        limit: usize,
    ) -> Result<Vec<Batch>, RepoError> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM batches WHERE 1 = 1");
        match owner {
            Some(Some(owner)) => {
                q.push(" AND owner = ").push_bind(owner);
            }
            Some(None) => {
                q.push(" AND owner IS NULL");
            }
            None => {}
        }
        if let Some(before) = before {
            q.push(" AND id < ").push_bind(before);
        }
        q.push(" ORDER BY id DESC LIMIT +")
            .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(batch_from_row).collect()
    }

    async fn batch_counts(&self, id: &str) -> Result<Vec<BatchCount>, RepoError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n, COALESCE(SUM(credits), 0) AS credits
             FROM tasks WHERE batch_id = ? GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get("state")?;
                Ok(BatchCount {
                    state: TaskState::from_str(&state).map_err(|_| RepoError::Corrupt {
                        id: id.to_owned(),
                        message: format!("unknown state {state:?} in batch"),
                    })?,
                    count: row.try_get("n")?,
                    credits: row.try_get("credits")?,
                })
            })
            .collect()
    }
}
