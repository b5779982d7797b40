//! Storage faults an operator has to fix (a full disk, a read-only file or mount, a failing
//! device), told apart from every other error: clients get a 503 with a stable code and a
//! sentence instead of an opaque 500, and the database writer reopens its connection so it
//! recovers by itself once the cause is gone.

use std::error::Error as StdError;
use std::io;

use crate::domain::{ErrorCode, JobCode};

/// Why storage refused a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageFault {
    /// No space left (disk, quota, or the database's size cap).
    Full,
    /// The file, directory or mount does not accept writes.
    ReadOnly,
    /// The device answered with an I/O error.
    Failing,
}

impl StorageFault {
    /// The catalogue's code for this fault.
    pub fn error_code(self) -> ErrorCode {
        match self {
            Self::Full => ErrorCode::StorageFull,
            Self::ReadOnly => ErrorCode::StorageReadOnly,
            Self::Failing => ErrorCode::StorageUnavailable,
        }
    }

    /// The code a task waiting for storage shows.
    pub fn job_code(self) -> JobCode {
        match self {
            Self::Full => JobCode::StorageFull,
            Self::ReadOnly => JobCode::StorageReadOnly,
            Self::Failing => JobCode::StorageUnavailable,
        }
    }

    /// The stable code clients see.
    pub fn code(self) -> &'static str {
        self.error_code().as_str()
    }

    /// A sentence for a person; `what` names the store ("the database", "the bucket").
    pub fn sentence(self, what: &str) -> String {
        match self {
            Self::Full => format!(
                "{what} is full, so nothing new can be accepted; nothing was stored. Try again once the operator has freed space"
            ),
            Self::ReadOnly => format!(
                "{what} does not accept writes (read-only file or mount); nothing was stored. Try again once the operator has fixed it"
            ),
            Self::Failing => {
                format!("{what} reports I/O errors; nothing was stored. Try again later")
            }
        }
    }

    /// The fault behind a database error: SQLite's result code, PostgreSQL's SQLSTATE, or
    /// the I/O error under it (a lost or refused connection to PostgreSQL counts as
    /// unavailable).
    pub fn of_sqlx(e: &sqlx::Error) -> Option<Self> {
        match e {
            sqlx::Error::Database(db) => {
                if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                    return Self::of_sqlstate(pg.code());
                }
                let code: i64 = db.code()?.parse().ok()?;
                // Extended result codes carry the primary code in their low byte.
                match code & 0xff {
                    13 => Some(Self::Full),     // SQLITE_FULL
                    8 => Some(Self::ReadOnly),  // SQLITE_READONLY
                    10 => Some(Self::Failing),  // SQLITE_IOERR
                    14 => Some(Self::ReadOnly), // SQLITE_CANTOPEN
                    _ => None,
                }
            }
            // A database server that cannot be reached (PostgreSQL down or restarting).
            sqlx::Error::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::NotConnected
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                Some(Self::Failing)
            }
            sqlx::Error::Io(io) => Self::of_io(io),
            other => Self::in_chain(other),
        }
    }

    /// The fault behind a PostgreSQL error, by its SQLSTATE.
    pub fn of_sqlstate(code: &str) -> Option<Self> {
        match code {
            "53100" => Some(Self::Full),     // disk_full
            "25006" => Some(Self::ReadOnly), // read_only_sql_transaction (a standby, or read-only mode)
            "58030" => Some(Self::Failing),  // io_error
            // The server is going away or not accepting connections yet: admin_shutdown,
            // crash_shutdown, cannot_connect_now, and class 08, connection exceptions.
            "57P01" | "57P02" | "57P03" => Some(Self::Failing),
            _ if code.starts_with("08") => Some(Self::Failing),
            _ => None,
        }
    }

    /// The fault behind an I/O error, by its kind or OS error number.
    pub fn of_io(e: &io::Error) -> Option<Self> {
        match e.kind() {
            io::ErrorKind::StorageFull => return Some(Self::Full),
            io::ErrorKind::ReadOnlyFilesystem => return Some(Self::ReadOnly),
            _ => {}
        }
        match e.raw_os_error() {
            Some(28 | 122) => Some(Self::Full), // ENOSPC, EDQUOT
            Some(30) => Some(Self::ReadOnly),   // EROFS
            Some(5) => Some(Self::Failing),     // EIO
            _ => None,
        }
    }

    /// The first I/O fault anywhere in an error's chain of sources (object_store wraps the
    /// local file system's errors two levels deep).
    pub fn in_chain(e: &(dyn StdError + 'static)) -> Option<Self> {
        let mut current = Some(e);
        while let Some(err) = current {
            if let Some(io) = err.downcast_ref::<io::Error>()
                && let Some(fault) = Self::of_io(io)
            {
                return Some(fault);
            }
            current = err.source();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified_by_number_and_kind() {
        let full = io::Error::from_raw_os_error(28);
        assert_eq!(StorageFault::of_io(&full), Some(StorageFault::Full));
        let ro = io::Error::from_raw_os_error(30);
        assert_eq!(StorageFault::of_io(&ro), Some(StorageFault::ReadOnly));
        let other = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(StorageFault::of_io(&other), None);
    }

    #[test]
    fn a_fault_is_found_inside_a_wrapped_error() {
        #[derive(Debug, thiserror::Error)]
        #[error("copying failed")]
        struct Wrapper(#[source] io::Error);
        let wrapped = Wrapper(io::Error::from_raw_os_error(28));
        assert_eq!(StorageFault::in_chain(&wrapped), Some(StorageFault::Full));
    }

    #[test]
    fn postgres_sqlstates_are_classified() {
        assert_eq!(StorageFault::of_sqlstate("53100"), Some(StorageFault::Full));
        assert_eq!(
            StorageFault::of_sqlstate("25006"),
            Some(StorageFault::ReadOnly)
        );
        assert_eq!(
            StorageFault::of_sqlstate("57P01"),
            Some(StorageFault::Failing)
        );
        assert_eq!(
            StorageFault::of_sqlstate("08006"),
            Some(StorageFault::Failing)
        );
        // A constraint violation is the caller's business, not a storage fault.
        assert_eq!(StorageFault::of_sqlstate("23505"), None);
        let refused = sqlx::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(StorageFault::of_sqlx(&refused), Some(StorageFault::Failing));
    }

    #[test]
    fn codes_are_stable() {
        assert_eq!(StorageFault::Full.code(), "storage_full");
        assert_eq!(StorageFault::ReadOnly.code(), "storage_read_only");
        assert!(
            StorageFault::Full
                .sentence("the database")
                .starts_with("the database is full")
        );
    }
}
