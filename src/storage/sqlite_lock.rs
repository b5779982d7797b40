//! One serving process per SQLite file. darkroom keeps its status board, live events and
//! provider limits' view in the memory of the process serving the file; a second process
//! on the same file would answer stale statuses and miss events. So `darkroom serve` holds
//! an exclusive lock on `{database}.lock` (`flock`, released by the kernel when the process
//! ends, however it ends) and a second one stops at start with a sentence. Several
//! instances belong on PostgreSQL. The other commands (`reindex`, `gc`, `keys`,
//! `migrate-db`) take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// Held while the process serves the file; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct ServingLock {
    _file: File,
    pub path: PathBuf,
}

/// Takes the serving lock of the SQLite database `url` names; `None` for PostgreSQL and
/// in-memory databases. The error is a sentence for the operator.
pub fn lock_for_serving(url: &str) -> Result<Option<ServingLock>, String> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("the database URL {url:?} is not one SQLite reads: {e}"))?;
    let database = options.get_filename().to_path_buf();
    let path = PathBuf::from(format!("{}.lock", database.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for the sentence a second process prints.
            let _ = file.set_len(0);
            let _ = write!(file, "{}", std::process::id());
            let _ = file.flush();
            Ok(Some(ServingLock { _file: file, path }))
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another darkroom process".to_owned()
            } else {
                format!("another darkroom process (pid {holder})")
            };
            Err(format!(
                "{who} is serving the SQLite database {}: one process per SQLite file (a second would show stale statuses and miss events). Stop that one first, or run several instances on PostgreSQL (DARKROOM_DATABASE_URL=postgres://…). The lock is {}",
                database.display(),
                path.display()
            ))
        }
        Err(TryLockError::Error(e)) => Err(format!(
            "cannot lock {} (one process per SQLite file): {e}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_and_the_first_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("darkroom.db").display());
        let first = lock_for_serving(&url)
            .unwrap()
            .expect("a file database is locked");
        let refused = lock_for_serving(&url).unwrap_err();
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("PostgreSQL"), "{refused}");
        drop(first);
        assert!(lock_for_serving(&url).unwrap().is_some());
        assert!(lock_for_serving("sqlite::memory:").unwrap().is_none());
        assert!(
            lock_for_serving("postgres://localhost/db")
                .unwrap()
                .is_none()
        );
    }
}
