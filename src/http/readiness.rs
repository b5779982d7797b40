//! What `/readyz` checks: that the instance can do its job now, not only that its files are
//! open. The database must accept a write (a transaction that is rolled back), the bucket
//! must accept a write (a probe object written, read back and deleted, at most every
//! `health.bucket_probe_secs`), and the disks holding local files must have room above a
//! floor. Each failed check says what is wrong in words.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use utoipa::ToSchema;

use crate::config::Config;
use crate::storage::{BlobStore, StorageFault, TaskRepo};

/// Room a write probe of the database asks for: a rolled-back write this large must fit.
const DATABASE_HEADROOM_BYTES: u32 = 64 * 1024;
/// How long a passed database check stands for `/api/info`.
const DATABASE_RECHECK: Duration = Duration::from_secs(5);
/// A probe that takes longer than this counts as failed (a wedged writer, a hung mount).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// `ok`, `full`, `read_only` or `unavailable`.
    pub status: &'static str,
    /// What is wrong, in words; `None` when ok.
    pub problem: Option<String>,
}

impl Check {
    fn ok() -> Self {
        Self {
            status: "ok",
            problem: None,
        }
    }

    fn failed(fault: Option<StorageFault>, what: &str, cause: &str) -> Self {
        let status = match fault {
            Some(StorageFault::Full) => "full",
            Some(StorageFault::ReadOnly) => "read_only",
            Some(StorageFault::Failing) | None => "unavailable",
        };
        let problem = match fault {
            Some(StorageFault::Full) => format!("{what} is full and refuses writes ({cause})"),
            Some(StorageFault::ReadOnly) => {
                format!("{what} is read-only and refuses writes ({cause})")
            }
            _ => format!("{what} does not accept writes ({cause})"),
        };
        Self {
            status,
            problem: Some(problem),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Free space on a disk that holds local files.
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpace {
    /// `database` or `bucket`.
    pub holds: &'static str,
    /// `ok` or `low`.
    pub status: &'static str,
    pub free_bytes: u64,
    pub min_free_bytes: u64,
}

/// The checks, with the bucket probe's last outcome.
pub struct ReadinessChecks {
    repo: Arc<dyn TaskRepo>,
    blobs: BlobStore,
    /// Directories whose disks must have room: the database file's and the local bucket's.
    local_dirs: Vec<(&'static str, PathBuf)>,
    min_free_bytes: u64,
    bucket_probe_every: Duration,
    last_bucket: Mutex<Option<(Instant, Check)>>,
    last_database: Mutex<Option<(Instant, Check)>>,
    /// One bucket probe at a time; callers arriving meanwhile wait for its outcome.
    probing: tokio::sync::Mutex<()>,
}

impl ReadinessChecks {
    pub fn new(config: &Config, repo: Arc<dyn TaskRepo>, blobs: BlobStore) -> Self {
        let mut local_dirs = Vec::new();
        if let Some(dir) = sqlite_dir(&config.database_url()) {
            local_dirs.push(("database", dir));
        }
        if config.storage.s3.is_none() {
            local_dirs.push(("bucket", config.bucket_dir()));
        }
        Self {
            repo,
            blobs,
            local_dirs,
            min_free_bytes: config.health.min_free_mb.saturating_mul(1024 * 1024),
            bucket_probe_every: config.health.bucket_probe_secs,
            last_bucket: Mutex::new(None),
            last_database: Mutex::new(None),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    /// The database's last check if it passed within [`DATABASE_RECHECK`], else a fresh one
    /// (for `/api/info`, which the page asks often).
    pub async fn database_recent(&self) -> Check {
        {
            let last = self.last_database.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, check)) = &*last
                && check.is_ok()
                && at.elapsed() < DATABASE_RECHECK
            {
                return check.clone();
            }
        }
        self.database().await
    }

    /// The database accepts a write now (rolled back, so nothing is left behind).
    pub async fn database(&self) -> Check {
        let check = self.probe_database().await;
        *self.last_database.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), check.clone()));
        check
    }

    async fn probe_database(&self) -> Check {
        match tokio::time::timeout(
            PROBE_TIMEOUT,
            self.repo.probe_write(DATABASE_HEADROOM_BYTES),
        )
        .await
        {
            // A rolled-back write may fit in SQLite's cache on a disk with no room at all.
            Ok(Ok(())) => match self.dir_of("database").and_then(free_bytes) {
                Some(free) if free < u64::from(DATABASE_HEADROOM_BYTES) => Check::failed(
                    Some(StorageFault::Full),
                    "the database",
                    &format!("its disk has {free} bytes free"),
                ),
                _ => Check::ok(),
            },
            Ok(Err(e)) => Check::failed(e.fault(), "the database", &e.to_string()),
            Err(_) => Check::failed(
                None,
                "the database",
                &format!("no write went through within {} s", PROBE_TIMEOUT.as_secs()),
            ),
        }
    }

    /// The bucket accepts a write; probed at most every `bucket_probe_every`, except that a
    /// failed probe is retried on the next call, so recovery shows at once.
    pub async fn bucket(&self) -> Check {
        if let Some(check) = self.recent_bucket() {
            return check;
        }
        let _one = self.probing.lock().await;
        if let Some(check) = self.recent_bucket() {
            return check;
        }
        let check = match tokio::time::timeout(PROBE_TIMEOUT, self.blobs.probe()).await {
            Ok(Ok(())) => Check::ok(),
            Ok(Err(e)) => Check::failed(e.fault(), "the bucket", &e.to_string()),
            Err(_) => Check::failed(
                None,
                "the bucket",
                &format!("no write went through within {} s", PROBE_TIMEOUT.as_secs()),
            ),
        };
        *self.last_bucket.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), check.clone()));
        check
    }

    fn dir_of(&self, holds: &str) -> Option<&Path> {
        self.local_dirs
            .iter()
            .find(|(h, _)| *h == holds)
            .map(|(_, dir)| dir.as_path())
    }

    fn recent_bucket(&self) -> Option<Check> {
        let last = self.last_bucket.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, check)) if check.is_ok() && at.elapsed() < self.bucket_probe_every => {
                Some(check.clone())
            }
            _ => None,
        }
    }

    /// Free space where local files live, and a sentence for each disk below the floor.
    pub fn disks(&self) -> (Vec<DiskSpace>, Vec<String>) {
        let mut disks = Vec::new();
        let mut problems = Vec::new();
        if self.min_free_bytes == 0 {
            return (disks, problems);
        }
        for (holds, dir) in &self.local_dirs {
            let Some(free_bytes) = free_bytes(dir) else {
                continue;
            };
            let low = free_bytes < self.min_free_bytes;
            if low {
                problems.push(format!(
                    "the disk holding the {holds} has {} MiB free, below the floor of {} MiB (health.min_free_mb)",
                    free_bytes / (1024 * 1024),
                    self.min_free_bytes / (1024 * 1024)
                ));
            }
            disks.push(DiskSpace {
                holds,
                status: if low { "low" } else { "ok" },
                free_bytes,
                min_free_bytes: self.min_free_bytes,
            });
        }
        (disks, problems)
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// The directory of an SQLite database file (`None` for in-memory databases).
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next()?;
    if file.is_empty() || file.contains(":memory:") || file.starts_with("file:") {
        return None;
    }
    let parent = Path::new(file).parent()?;
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent.to_path_buf()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_directory_is_read_from_its_url() {
        assert_eq!(
            sqlite_dir("sqlite://./data/darkroom.db"),
            Some(PathBuf::from("./data"))
        );
        assert_eq!(
            sqlite_dir("sqlite:///var/lib/darkroom/d.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/darkroom"))
        );
        assert_eq!(sqlite_dir("sqlite:d.db"), Some(PathBuf::from(".")));
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("postgres://x/y"), None);
    }

    #[test]
    fn free_space_is_read_from_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|b| b > 0));
    }
}
