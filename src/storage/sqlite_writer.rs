//! How darkroom opens SQLite and keeps its single writer healthy.
//!
//! Durability: WAL journal, `synchronous = NORMAL`, a 10 s busy timeout, foreign keys on.
//! In WAL mode with `NORMAL`, a commit is durable against a crash of darkroom itself
//! (every acknowledged write survives a SIGKILL); a power cut or kernel crash may lose the
//! last transactions committed since the previous WAL checkpoint sync, but never corrupts
//! the file. `DARKROOM_SQLITE_SYNCHRONOUS=full` syncs the WAL on every commit and keeps
//! those too, at a cost per write.
//!
//! A failed write must never leave the writer inside a transaction. SQLite itself rolls a
//! transaction back on some errors (a full disk, an I/O error), after which sqlx's own
//! bookkeeping of the transaction depth is wrong: its `ROLLBACK` on drop fails, it still
//! counts one open transaction, and the next `BEGIN` becomes a `SAVEPOINT` nested in a
//! transaction that is never committed. Writes then seem to succeed, stay invisible to every
//! other connection, and vanish at restart. So after any failed write the writer's
//! connection is closed (SQLite rolls back whatever it had open) and a fresh one is opened
//! before the next write. The same reopening lets a database that was read-only at start
//! accept writes once its permissions are fixed, without a restart.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::error::ErrorKind;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};

use super::repo::RepoError;

/// How hard SQLite syncs commits to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// WAL + `synchronous = NORMAL`: survives a process crash; a power cut may lose the last
    /// commits (never the file).
    #[default]
    Normal,
    /// WAL + `synchronous = FULL`: every commit is synced before it is acknowledged.
    Full,
}

/// The writer's connection pool (one connection) and what keeps it healthy.
pub(super) struct Writer {
    pub(super) pool: SqlitePool,
    /// Set after a failed write: the connection is closed before its next use.
    reopen: Arc<AtomicBool>,
    /// `PRAGMA max_page_count` for every connection; 0 means SQLite's own limit.
    page_cap: Arc<AtomicU32>,
    /// An in-memory database lives only as long as its one connection: never reopened.
    in_memory: bool,
}

/// What every connection is opened with.
pub(super) fn connect_options(
    url: &str,
    durability: Durability,
) -> Result<SqliteConnectOptions, RepoError> {
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        })
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

/// SQLite's default largest page count (its own limit).
const NO_PAGE_CAP: u32 = 4_294_967_294;

impl Writer {
    pub(super) async fn open(
        options: SqliteConnectOptions,
        in_memory: bool,
    ) -> Result<Self, RepoError> {
        let reopen = Arc::new(AtomicBool::new(false));
        let page_cap = Arc::new(AtomicU32::new(0));
        let flag = reopen.clone();
        let cap = page_cap.clone();
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .before_acquire(move |conn, _meta| {
                // A connection still counting an open transaction is as suspect as one
                // whose last write failed: close it, a fresh one takes its place.
                let healthy = !flag.swap(false, Ordering::AcqRel) && !conn.is_in_transaction();
                Box::pin(async move { Ok(healthy) })
            })
            .after_connect(move |conn, _meta| {
                let pages = cap.load(Ordering::Acquire);
                Box::pin(async move {
                    if pages > 0 {
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "PRAGMA max_page_count = {pages}"
                        )))
                        .execute(conn)
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            reopen,
            page_cap,
            in_memory,
        })
    }

    /// Converts a failed write, and makes sure the connection it ran on is not reused:
    /// whatever SQLite or sqlx think about its transaction, a fresh connection does not
    /// inherit it. Constraint violations leave the connection sound and keep it.
    pub(super) fn failed(&self, e: sqlx::Error) -> RepoError {
        let constraint = matches!(&e, sqlx::Error::Database(db) if matches!(
            db.kind(),
            ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation
        ));
        if !constraint && !self.in_memory {
            self.reopen.store(true, Ordering::Release);
        }
        RepoError::Database(e)
    }

    /// [`Self::failed`] for an error already turned into a [`RepoError`].
    pub(super) fn failed_repo(&self, e: RepoError) -> RepoError {
        match e {
            RepoError::Database(e) => self.failed(e),
            other => other,
        }
    }

    /// Proves the database accepts a write now: a transaction that writes
    /// `headroom_bytes` bytes and is rolled back, leaving nothing behind.
    pub(super) async fn probe(&self, headroom_bytes: u32) -> Result<(), RepoError> {
        let result: Result<(), sqlx::Error> = async {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            sqlx::query("INSERT INTO write_probe (filler) VALUES (zeroblob(?))")
                .bind(i64::from(headroom_bytes))
                .execute(&mut *tx)
                .await?;
            tx.rollback().await
        }
        .await;
        result.map_err(|e| self.failed(e))
    }

    /// Caps the database at `pages` pages of its page size (`None`: SQLite's own limit),
    /// on the live writer and every connection opened later. A database at its cap refuses
    /// writes with "database or disk is full", exactly as on a full disk: this is how the
    /// test suite fills a database without filling a disk.
    pub(super) async fn set_page_cap(&self, pages: Option<u32>) -> Result<(), RepoError> {
        let pages = pages.unwrap_or(0);
        self.page_cap.store(pages, Ordering::Release);
        let limit = if pages == 0 { NO_PAGE_CAP } else { pages };
        let mut conn = self.pool.acquire().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {limit}"
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}
