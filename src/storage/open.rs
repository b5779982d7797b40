//! Opening the repository a database URL names: `sqlite:` (the embedded default) or
//! `postgres:` / `postgresql:`. Migrations of the chosen backend are applied on open.

use std::sync::Arc;

use super::postgres::PgRepo;
use super::sqlite::SqliteRepo;
use super::{AccessRepo, Durability, Repo, RepoError};

/// Which database implements the repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a URL names by its scheme; `None` for any other scheme.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// An open repository, as trait objects and as its concrete backend (for what only that
/// backend has: SQLite's size cap and file handles, PostgreSQL's pool).
pub struct Opened {
    pub backend: Backend,
    pub repo: Arc<dyn Repo>,
    pub access: Arc<dyn AccessRepo>,
    pub sqlite: Option<Arc<SqliteRepo>>,
    pub postgres: Option<Arc<PgRepo>>,
}

impl Opened {
    /// Closes every connection of the backend.
    pub async fn close(&self) {
        if let Some(sqlite) = &self.sqlite {
            sqlite.close().await;
        }
        if let Some(pg) = &self.postgres {
            pg.close().await;
        }
    }
}

/// Opens the database at `url` (creating an SQLite file if needed) and applies pending
/// migrations. `durability` applies to SQLite only.
pub async fn open(
    url: &str,
    max_connections: u32,
    durability: Durability,
) -> Result<Opened, RepoError> {
    match Backend::of_url(url) {
        Some(Backend::Postgres) => {
            let pg = Arc::new(PgRepo::connect(url, max_connections).await?);
            Ok(Opened {
                backend: Backend::Postgres,
                repo: pg.clone(),
                access: pg.clone(),
                sqlite: None,
                postgres: Some(pg),
            })
        }
        // Anything else is SQLite's to accept or refuse (configuration checks the scheme).
        _ => {
            let sqlite = Arc::new(SqliteRepo::connect(url, max_connections, durability).await?);
            Ok(Opened {
                backend: Backend::Sqlite,
                repo: sqlite.clone(),
                access: sqlite.clone(),
                sqlite: Some(sqlite),
                postgres: None,
            })
        }
    }
}

/// A database URL fit for a log line or an error message: the password, if any, is
/// replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            // Only fails for URLs that cannot have a password, which this one has.
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The file an `sqlite:` URL names (`None` when the URL is not a valid SQLite URL).
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    Some(options.get_filename().to_path_buf())
}

/// Whether two URLs name the same database: one SQLite file (however the path is
/// written), or one database on the same PostgreSQL server (whoever connects). Names of one
/// server written differently (`localhost` and `127.0.0.1`) are not recognised.
pub fn same_database(a: &str, b: &str) -> bool {
    match (Backend::of_url(a), Backend::of_url(b)) {
        (Some(Backend::Sqlite), Some(Backend::Sqlite)) => {
            let (Some(a), Some(b)) = (sqlite_path(a), sqlite_path(b)) else {
                return a == b;
            };
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
        }
        (Some(Backend::Postgres), Some(Backend::Postgres)) => {
            let server = |url: &str| {
                let parsed = url::Url::parse(url).ok()?;
                Some((
                    parsed.host_str()?.to_ascii_lowercase(),
                    parsed.port().unwrap_or(5432),
                    parsed.path().trim_start_matches('/').to_owned(),
                ))
            };
            server(a).is_some_and(|server_a| server(b) == Some(server_a))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_scheme() {
        assert_eq!(Backend::of_url("sqlite://./d.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
    }

    #[test]
    fn one_database_is_recognised_however_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.db");
        std::fs::write(&file, b"").unwrap();
        let plain = format!("sqlite://{}", file.display());
        let dotted = format!("sqlite://{}/./d.db?mode=rwc", dir.path().display());
        assert!(same_database(&plain, &dotted));
        assert!(!same_database(
            &plain,
            &format!("sqlite://{}/e.db", dir.path().display())
        ));
        assert!(same_database(
            "postgres://a@db:5432/x",
            "postgresql://b:pw@DB/x"
        ));
        assert!(!same_database("postgres://db/x", "postgres://db/y"));
        assert!(!same_database("postgres://db/x", "postgres://db:5433/x"));
        assert!(!same_database("postgres://db/x", &plain));
    }

    #[test]
    fn passwords_never_reach_a_log_line() {
        let shown = redact_url("postgres://app:s3cret@db.internal:5432/darkroom");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(shown, "postgres://app:***@db.internal:5432/darkroom");
        assert_eq!(redact_url("sqlite://./data/d.db"), "sqlite://./data/d.db");
    }
}
