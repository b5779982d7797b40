//! Copying one database's rows into another (`darkroom migrate-db`): each table read in
//! key order a page at a time and written whole, never over a row the target already
//! holds (`INSERT … ON CONFLICT DO NOTHING`). The SQL is written once for both backends (in
//! `copy_sql.rs`, as in `stats.rs`): tasks go through the whole-row insert of
//! [`super::TaskRepo::restore`],
//! every other table through typed [`Cell`]s, since only the tasks' list columns are
//! stored differently (JSON text on SQLite, `TEXT[]` on PostgreSQL).
//!
//! [`Table::ALL`] is every table that holds state, parents first; [`NOT_COPIED`] names the
//! others with the reason. A test checks that the two together are every table of both
//! schemas, so a new table cannot be forgotten.

use async_trait::async_trait;

use super::copy_sql::{add_rows, add_tasks, count_rows, rows_after, tasks_after_sql};
use super::{RepoError, Task};
use crate::domain::TaskId;

/// A table `darkroom migrate-db` copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    ApiKeys,
    WebhookSecrets,
    ServerSecrets,
    Uploads,
    Batches,
    Tasks,
    WebhookDeliveries,
    IdempotencyKeys,
    ProviderPauses,
    CreditBudgets,
    CreditSpend,
    CreditReservations,
}

/// Tables left out, with the reason.
pub const NOT_COPIED: [(&str, &str); 5] = [
    (
        "write_probe",
        "always empty: /readyz writes to it in a transaction it rolls back",
    ),
    (
        "provider_creates",
        "the creates of the last seconds (the provider's sliding window), forgotten once out of the window",
    ),
    (
        "stats_counts",
        "the statistics rollup: the target's triggers rebuild it from the copied tasks",
    ),
    (
        "stats_durations",
        "the statistics rollup: the target's triggers rebuild it from the copied tasks",
    ),
    (
        "stats_duration_buckets",
        "the rollup's fixed bucket bounds, written by the target's own migration",
    ),
];

/// What a column holds, as both backends read and write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Text,
    Bytes,
}

use Kind::{Bytes, Int, Text};

/// A table's columns in order; its key is the first [`Table::key_len`] of them.
pub(super) type Columns = &'static [(&'static str, Kind)];

impl Table {
    /// Every copied table, each after the tables its rows point at.
    pub const ALL: [Table; 12] = [
        Self::ApiKeys,
        Self::WebhookSecrets,
        Self::ServerSecrets,
        Self::Uploads,
        Self::Batches,
        Self::Tasks,
        Self::WebhookDeliveries,
        Self::IdempotencyKeys,
        Self::ProviderPauses,
        Self::CreditBudgets,
        Self::CreditSpend,
        Self::CreditReservations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ApiKeys => "api_keys",
            Self::WebhookSecrets => "webhook_secrets",
            Self::ServerSecrets => "server_secrets",
            Self::Uploads => "uploads",
            Self::Batches => "batches",
            Self::Tasks => "tasks",
            Self::WebhookDeliveries => "webhook_deliveries",
            Self::IdempotencyKeys => "idempotency_keys",
            Self::ProviderPauses => "provider_pauses",
            Self::CreditBudgets => "credit_budgets",
            Self::CreditSpend => "credit_spend",
            Self::CreditReservations => "credit_reservations",
        }
    }

    /// The columns copied as cells; `None` for tasks, which are copied as [`Task`]s.
    pub(super) fn columns(self) -> Option<Columns> {
        Some(match self {
            Self::Tasks => return None,
            Self::ApiKeys => &[
                ("name", Text),
                ("key_hash", Text),
                ("hint", Text),
                ("created_at", Int),
                ("revoked_at", Int),
            ],
            Self::WebhookSecrets => &[
                ("owner", Text),
                ("secret", Text),
                ("previous_secret", Text),
                ("previous_until", Int),
                ("created_at", Int),
                ("rotated_at", Int),
            ],
            Self::ServerSecrets => &[("name", Text), ("value", Text), ("created_at", Int)],
            Self::Uploads => &[("key", Text), ("owner", Text), ("created_at", Int)],
            Self::Batches => &[
                ("id", Text),
                ("owner", Text),
                ("prompt", Text),
                ("webhook_url", Text),
                ("total", Int),
                ("created_at", Int),
            ],
            Self::WebhookDeliveries => &[
                ("id", Text),
                ("task_id", Text),
                ("url", Text),
                ("state", Text),
                ("attempts", Int),
                ("run_at", Int),
                ("last_status", Int),
                ("last_error", Text),
                ("created_at", Int),
                ("delivered_at", Int),
            ],
            Self::IdempotencyKeys => &[
                ("owner", Text),
                ("idem_key", Text),
                ("request_hash", Text),
                ("token", Text),
                ("locked_until", Int),
                ("status", Int),
                ("body", Bytes),
                ("created_at", Int),
                ("completed_at", Int),
                ("expires_at", Int),
            ],
            Self::ProviderPauses => &[
                ("provider", Text),
                ("until_ms", Int),
                ("code", Text),
                ("reason", Text),
            ],
            Self::CreditBudgets => &[("owner", Text), ("daily_credits", Int), ("updated_at", Int)],
            Self::CreditSpend => &[("day", Text), ("scope", Text), ("credits", Int)],
            Self::CreditReservations => &[
                ("task_id", Text),
                ("day", Text),
                ("owner", Text),
                ("credits", Int),
                ("at", Int),
            ],
        })
    }

    /// How many leading columns make the primary key.
    pub(super) fn key_len(self) -> usize {
        match self {
            Self::IdempotencyKeys | Self::CreditSpend => 2,
            _ => 1,
        }
    }

    /// The column pointing at a task, for a table whose rows need their task: such a row is
    /// written only when the target holds its task.
    pub(super) fn task_column(self) -> Option<usize> {
        match self {
            Self::WebhookDeliveries => Some(1),
            Self::CreditReservations => Some(0),
            _ => None,
        }
    }
}

/// One value of a row, typed so that both backends bind and read it alike.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(Some(v)) => write!(f, "{v}"),
            Self::Text(Some(v)) => f.write_str(v),
            Self::Bytes(Some(v)) => write!(f, "({} bytes)", v.len()),
            Self::Int(None) | Self::Text(None) | Self::Bytes(None) => f.write_str("NULL"),
        }
    }
}

/// A row of a table other than tasks: its values in the table's column order.
pub type CellRow = Vec<Cell>;

/// What writing one page into the target did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Added {
    /// Rows written.
    pub inserted: u64,
    /// Rows whose key the target already held: left as they were.
    pub present: u64,
    /// Rows not written although their key is free, by key, with the reason (a task whose
    /// provider id another task of the target holds; a delivery whose task is missing).
    pub refused: Vec<(String, String)>,
}

#[async_trait]
pub trait CopyRepo: Send + Sync + 'static {
    /// How many rows `table` holds.
    async fn count_rows(&self, table: Table) -> Result<u64, RepoError>;

    /// Up to `limit` tasks by id, after `after`.
    async fn tasks_after(
        &self,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, RepoError>;

    /// Writes each task whole (every column as it is) unless its id, or its provider id at
    /// its provider, is taken; all in one transaction.
    async fn add_tasks(&self, tasks: &[Task]) -> Result<Added, RepoError>;

    /// Up to `limit` rows of `table` (any but tasks) in key order, after the row `after`.
    async fn rows_after(
        &self,
        table: Table,
        after: Option<&CellRow>,
        limit: usize,
    ) -> Result<Vec<CellRow>, RepoError>;

    /// Writes each row (read by [`CopyRepo::rows_after`] from a database of either backend)
    /// unless its key is taken; all in one transaction.
    async fn add_rows(&self, table: Table, rows: &[CellRow]) -> Result<Added, RepoError>;
}

#[async_trait]
impl CopyRepo for super::sqlite::SqliteRepo {
    async fn count_rows(&self, table: Table) -> Result<u64, RepoError> {
        count_rows(&self.pool, table).await
    }

    async fn tasks_after(
        &self,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, RepoError> {
        let rows = tasks_after_sql(after, limit)
            .build()
            .fetch_all(&self.pool)
            .await?;
        super::sqlite_rows::tasks_from_rows(&rows)
    }

    async fn add_tasks(&self, tasks: &[Task]) -> Result<Added, RepoError> {
        add_tasks::<sqlx::Sqlite, _>(
            &mut *self.writer.conn().await?,
            tasks,
            super::sqlite_rows::to_json,
        )
        .await
        .map_err(|e| self.writer.failed(e))
    }

    async fn rows_after(
        &self,
        table: Table,
        after: Option<&CellRow>,
        limit: usize,
    ) -> Result<Vec<CellRow>, RepoError> {
        rows_after(&self.pool, table, after, limit).await
    }

    async fn add_rows(&self, table: Table, rows: &[CellRow]) -> Result<Added, RepoError> {
        add_rows::<sqlx::Sqlite>(&mut *self.writer.conn().await?, table, rows)
            .await
            .map_err(|e| match e {
                RepoError::Database(e) => self.writer.failed(e),
                other => other,
            })
    }
}

#[async_trait]
impl CopyRepo for super::postgres::PgRepo {
    async fn count_rows(&self, table: Table) -> Result<u64, RepoError> {
        count_rows(&self.pool, table).await
    }

    async fn tasks_after(
        &self,
        after: Option<&TaskId>,
        limit: usize,
    ) -> Result<Vec<Task>, RepoError> {
        let rows = tasks_after_sql(after, limit)
            .build()
            .fetch_all(&self.pool)
            .await?;
        super::postgres_rows::tasks_from_rows(&rows)
    }

    async fn add_tasks(&self, tasks: &[Task]) -> Result<Added, RepoError> {
        Ok(add_tasks::<sqlx::Postgres, _>(
            &mut *self.pool.acquire().await?,
            tasks,
            <[String]>::to_vec,
        )
        .await?)
    }

    async fn rows_after(
        &self,
        table: Table,
        after: Option<&CellRow>,
        limit: usize,
    ) -> Result<Vec<CellRow>, RepoError> {
        rows_after(&self.pool, table, after, limit).await
    }

    async fn add_rows(&self, table: Table, rows: &[CellRow]) -> Result<Added, RepoError> {
        add_rows::<sqlx::Postgres>(&mut *self.pool.acquire().await?, table, rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_lead_the_columns_and_names_are_unique() {
        let mut names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
        names.extend(NOT_COPIED.iter().map(|(name, _)| *name));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        for table in Table::ALL {
            if let Some(columns) = table.columns() {
                assert!(columns.len() >= table.key_len(), "{table:?}");
                // Keys are matched as text (`key_of`).
                let keys = &columns[..table.key_len()];
                assert!(keys.iter().all(|(_, kind)| *kind == Text), "{table:?}");
            }
        }
    }
}
