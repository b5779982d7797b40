//! Fresh PostgreSQL databases for tests: each test gets a database of its own on the test
//! server (`DARKROOM_TEST_POSTGRES_URL`, which `scripts/test.sh` always sets), dropped when
//! its guard drops, so tests run in parallel and a run leaves nothing behind. Databases a
//! killed run left are swept by the next run (their names carry their creation time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, PgConnection};

/// Every test database's name starts with this, then the creation time in Unix seconds.
const PREFIX: &str = "darkroom_test_";
/// A test database older than this belongs to a run that died: the next run drops it.
const ABANDONED_AFTER: Duration = Duration::from_secs(2 * 3600);

/// The test server's URL. Missing means the suite was not run through `./scripts/test.sh`:
/// that is a failure, not a skip (under `CI=true` and elsewhere alike).
pub fn postgres_url() -> String {
    std::env::var("DARKROOM_TEST_POSTGRES_URL").expect(
        "DARKROOM_TEST_POSTGRES_URL is not set: the PostgreSQL tests need a server; run the suite with ./scripts/test.sh, which makes sure PostgreSQL answers on 127.0.0.1:5432 and sets it",
    )
}

/// The URL of database `name` on the test server (the test URL with its path replaced).
fn url_of(name: &str) -> String {
    let mut url = url::Url::parse(&postgres_url()).expect("DARKROOM_TEST_POSTGRES_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A database of the test's own; dropped (with whatever connections are still open to it)
/// when this guard drops.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread with a
        // runtime of its own does the dropping, and the guard waits for it.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database")
                .block_on(drop_database(&name))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            println!("could not drop test database {}: {e}", self.name);
        }
    }
}

async fn admin() -> Result<PgConnection, sqlx::Error> {
    PgConnection::connect(&url_of("postgres")).await
}

async fn drop_database(name: &str) -> Result<(), sqlx::Error> {
    let mut admin = admin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    Ok(())
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drops test databases older than [`ABANDONED_AFTER`], once per test process.
async fn sweep_abandoned() {
    static SWEPT: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SWEPT
        .get_or_init(|| async {
            let Ok(mut admin) = admin().await else { return };
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'darkroom\\_test\\_%'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap_or_default();
            let cutoff = unix_secs().saturating_sub(ABANDONED_AFTER.as_secs());
            for name in names {
                let born = name
                    .strip_prefix(PREFIX)
                    .and_then(|rest| rest.split('_').next())
                    .and_then(|secs| secs.parse::<u64>().ok());
                if born.is_some_and(|born| born < cutoff) {
                    let _ = drop_database(&name).await;
                }
            }
        })
        .await;
}

/// Creates an empty database for one test.
pub async fn fresh_postgres() -> PgDatabase {
    sweep_abandoned().await;
    let name = format!("{PREFIX}{}_{}", unix_secs(), uuid::Uuid::now_v7().simple());
    let mut admin = admin().await.unwrap_or_else(|e| {
        panic!(
            "the test PostgreSQL server ({}) answers: {e}",
            postgres_url()
        )
    });
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
    PgDatabase {
        url: url_of(&name),
        name,
    }
}
