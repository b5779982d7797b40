//! The repository contract on SQLite: every check in `darkroom::storage::contract` (tasks
//! and the queue: priority, fairness between owners, age, queue positions, guarded
//! transitions and leases; batches; webhook deliveries; access), each on a fresh database.
//! Another backend runs the same suite by adding its own line.

use darkroom::storage::sqlite::SqliteRepo;

darkroom::repo_contract_tests!(sqlite, || async { SqliteRepo::in_memory().await.unwrap() });
