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

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use sqlx::error::ErrorKind;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqlitePool};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

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

/// The one connection every write goes through.
///
/// A file database's writer is held here between writes, not taken from a pool: sqlx's pool
/// sends a ping to a SQLite connection's thread when a connection is taken and again when it
/// is given back, two extra round trips (each a thread hand-over both ways) for every write.
/// An in-memory database lives only as long as its one connection, which its reads must share:
/// there the writer is that connection's pool.
pub(super) struct Writer {
    slot: Slot,
    options: SqliteConnectOptions,
    /// Set after a failed write: the connection is closed before its next use.
    reopen: AtomicBool,
    /// Set by [`Writer::close`]: every later write fails.
    closed: AtomicBool,
    /// `PRAGMA max_page_count` for every connection; 0 means SQLite's own limit.
    page_cap: AtomicU32,
}

enum Slot {
    Held(Mutex<Option<SqliteConnection>>),
    /// In memory: never reopened (a new connection would be a new, empty database).
    Shared(SqlitePool),
}

/// The writer's connection, lent for one write or one transaction; dropping it lends it to
/// the next writer.
pub(super) enum WriteConn<'a> {
    Held(MappedMutexGuard<'a, SqliteConnection>),
    Shared(PoolConnection<Sqlite>),
}

impl Deref for WriteConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Held(conn) => conn,
            Self::Shared(conn) => conn,
        }
    }
}

impl DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Held(conn) => conn,
            Self::Shared(conn) => conn,
        }
    }
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
    /// Opens the writer's connection (at once, so a database that cannot be opened fails
    /// the start).
    pub(super) async fn open(
        options: SqliteConnectOptions,
        in_memory: bool,
    ) -> Result<Self, RepoError> {
        let slot = if in_memory {
            Slot::Shared(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    // Never replaced: the database would go with it.
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options.clone())
                    .await?,
            )
        } else {
            Slot::Held(Mutex::new(Some(connect(&options, 0).await?)))
        };
        Ok(Self {
            slot,
            options,
            reopen: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            page_cap: AtomicU32::new(0),
        })
    }

    /// The connection for one write (or one transaction): waits for the write before it.
    /// A connection whose last write failed, or that still counts an open transaction, is
    /// closed first and a fresh one opened in its place; whatever SQLite or sqlx thought
    /// about its transaction, the fresh one does not inherit it.
    pub(super) async fn conn(&self) -> Result<WriteConn<'_>, sqlx::Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        let slot = match &self.slot {
            Slot::Shared(pool) => return Ok(WriteConn::Shared(pool.acquire().await?)),
            Slot::Held(slot) => slot,
        };
        let mut slot = slot.lock().await;
        let mut suspect = self.reopen.swap(false, Ordering::AcqRel);
        if !suspect
            && let Some(conn) = slot.as_mut()
            && conn.is_in_transaction()
        {
            // A transaction dropped unfinished queues its rollback on the connection's
            // thread; one round trip lets it through before the count is believed.
            suspect = conn.ping().await.is_err() || conn.is_in_transaction();
        }
        if suspect
            && let Some(old) = slot.take()
            && let Err(e) = old.close().await
        {
            tracing::debug!(error = %e, "closing the writer's connection after a failed write failed");
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(sqlx::Error::PoolClosed);
        }
        if slot.is_none() {
            *slot = Some(connect(&self.options, self.page_cap.load(Ordering::Acquire)).await?);
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map(WriteConn::Held)
            .map_err(|_| sqlx::Error::PoolClosed)
    }

    /// The in-memory database's pool, which its reads share; `None` for a file.
    pub(super) fn shared_pool(&self) -> Option<&SqlitePool> {
        match &self.slot {
            Slot::Shared(pool) => Some(pool),
            Slot::Held(_) => None,
        }
    }

    /// Closes the connection; every later write fails.
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        match &self.slot {
            Slot::Shared(pool) => pool.close().await,
            Slot::Held(slot) => {
                if let Some(conn) = slot.lock().await.take()
                    && let Err(e) = conn.close().await
                {
                    tracing::debug!(error = %e, "closing the writer's connection failed");
                }
            }
        }
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
        if !constraint && matches!(self.slot, Slot::Held(_)) {
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
            let mut conn = self.conn().await?;
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
        let mut conn = self.conn().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {limit}"
        )))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Opens a connection for the writer with the page cap in force (0: none).
async fn connect(
    options: &SqliteConnectOptions,
    page_cap: u32,
) -> Result<SqliteConnection, sqlx::Error> {
    let mut conn = SqliteConnection::connect_with(options).await?;
    if page_cap > 0 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {page_cap}"
        )))
        .execute(&mut conn)
        .await?;
    }
    Ok(conn)
}
