//! The repository contract on SQLite: every check in `darkroom::storage::contract` (tasks
//! and the queue: priority, fairness between owners, age, queue positions, guarded
//! transitions and leases; batches; webhook deliveries; access), each on a fresh database.
//! It runs twice: on a database file with a reader pool beside the writer (as in
//! production), and in memory. Another backend runs the same suite by adding its own line.

use std::ops::Deref;

use darkroom::storage::Durability;
use darkroom::storage::sqlite::SqliteRepo;

/// A repository on a file in a temporary directory that lives as long as it does.
struct OnFile {
    repo: SqliteRepo,
    _dir: tempfile::TempDir,
}

impl Deref for OnFile {
    type Target = SqliteRepo;

    fn deref(&self) -> &SqliteRepo {
        &self.repo
    }
}

async fn on_file() -> OnFile {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let repo = SqliteRepo::connect(&url, 4, Durability::Normal)
        .await
        .unwrap();
    OnFile { repo, _dir: dir }
}

darkroom::repo_contract_tests!(sqlite_file, on_file);
darkroom::repo_contract_tests!(sqlite_memory, || async {
    Box::new(SqliteRepo::in_memory().await.unwrap())
});
