//! The contract of [`CopyRepo`] (`darkroom migrate-db`): every table read whole, in key
//! order, a page at a time; rows written exactly as read, never over a row already held;
//! a row that cannot be written (its task missing, its provider id taken) named, not an
//! error.

use super::new_task;
use crate::domain::{TaskId, TaskState};
use crate::storage::copy::{Cell, CellRow, Table};
use crate::storage::{Repo, Task};

fn text(v: &str) -> Cell {
    Cell::Text(Some(v.to_owned()))
}

/// A row of `table` with key `key` (and, for a delivery, task `task`); `n` varies the
/// other values.
fn sample(table: Table, key: &str, n: i64, task: &str) -> CellRow {
    let none_text = Cell::Text(None);
    let none_int = Cell::Int(None);
    match table {
        Table::ApiKeys => vec![
            text(key),
            text(&format!("hash-{key}")),
            text("dk_ab"),
            Cell::Int(Some(n)),
            if n % 2 == 0 {
                none_int
            } else {
                Cell::Int(Some(n + 1))
            },
        ],
        Table::WebhookSecrets => vec![
            text(key),
            text("whsec_new"),
            if n % 2 == 0 {
                none_text
            } else {
                text("whsec_old")
            },
            if n % 2 == 0 {
                none_int
            } else {
                Cell::Int(Some(n + 9))
            },
            Cell::Int(Some(n)),
            Cell::Int(Some(n + 1)),
        ],
        Table::ServerSecrets => vec![text(key), text("secret"), Cell::Int(Some(n))],
        Table::Uploads => vec![
            text(key),
            if n % 2 == 0 { none_text } else { text("alice") },
            Cell::Int(Some(n)),
        ],
        Table::Batches => vec![
            text(key),
            text("alice"),
            text("a prompt, with 'quotes'"),
            none_text,
            Cell::Int(Some(3)),
            Cell::Int(Some(n)),
        ],
        Table::WebhookDeliveries => vec![
            text(key),
            text(task),
            text("https://hooks.example.com/d"),
            text("failed"),
            Cell::Int(Some(n)),
            Cell::Int(Some(n * 10)),
            Cell::Int(Some(500)),
            text("HTTP 500"),
            Cell::Int(Some(n)),
            none_int,
        ],
        Table::IdempotencyKeys => vec![
            // Two owners, so the key's second column decides within one owner.
            text(if key < "k-b" { "alice" } else { "" }),
            text(key),
            text("abc123"),
            text("token"),
            Cell::Int(Some(n)),
            Cell::Int(Some(202)),
            Cell::Bytes(Some(vec![0, 159, 146, 150, b'{', b'}'])),
            Cell::Int(Some(n)),
            Cell::Int(Some(n + 1)),
            Cell::Int(Some(n + 86_400_000)),
        ],
        Table::ProviderPauses => vec![
            text(key),
            Cell::Int(Some(n)),
            text("429"),
            text("rate limited"),
        ],
        Table::CreditBudgets => vec![text(key), Cell::Int(Some(n * 4)), Cell::Int(Some(n))],
        Table::CreditSpend => vec![
            text(if key < "k-b" {
                "2026-12-01"
            } else {
                "2026-12-02"
            }),
            text(key),
            Cell::Int(Some(n)),
        ],
        Table::CreditReservations => vec![
            text(task),
            text("2026-12-01"),
            if n % 2 == 0 { none_text } else { text("alice") },
            Cell::Int(Some(4)),
            Cell::Int(Some(n)),
        ],
        Table::Tasks => unreachable!("tasks are copied as tasks"),
    }
}

/// A finished task with every column set, as another database would hold it.
fn whole_task(created_at: i64, provider_task_id: &str) -> Task {
    let t = new_task(Some("alice"), 1, created_at);
    Task {
        id: t.id,
        state: TaskState::Failed,
        provider: t.provider,
        model: t.model,
        prompt: t.prompt,
        source: t.source,
        image_url: t.image_url,
        input_urls: vec!["https://example.com/a.png".into(), "uploads/b.png".into()],
        aspect_ratio: "9:16".into(),
        output_format: "jpeg".into(),
        priority: 1,
        batch_id: Some("bat_x".into()),
        owner: t.owner,
        attempts: 2,
        run_at: created_at + 5,
        lease_owner: Some("worker-1".into()),
        lease_until: Some(created_at + 60),
        provider_task_id: Some(provider_task_id.into()),
        callback_token_hash: "hash".into(),
        callback_at: Some(created_at + 3),
        result_source_urls: vec![],
        result_keys: vec![],
        result_urls: vec![],
        credits: Some(0),
        cost_time_ms: None,
        error_code: Some("provider_failed".into()),
        error_message: Some("no".into()),
        created_at,
        updated_at: created_at + 9,
        submitted_at: Some(created_at + 1),
        completed_at: Some(created_at + 9),
        retry_of: Some(TaskId::new()),
        webhook_url: Some("https://hooks.example.com/d".into()),
        missing_answers: 2,
        failover: crate::domain::task_row::Failover {
            allowed: Some(false),
            left: vec!["kie".into()],
            reason: Some("failing".into()),
            moved_at: Some(created_at + 1),
        },
    }
}

/// Every row of `table`, read in pages of two.
async fn read_all(repo: &dyn Repo, table: Table) -> Vec<CellRow> {
    let mut all: Vec<CellRow> = Vec::new();
    loop {
        let page = repo.rows_after(table, all.last(), 2).await.unwrap();
        assert!(page.len() <= 2, "{table:?}");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

pub async fn rows_are_read_in_key_order_and_never_overwritten(repo: &dyn Repo) {
    // Tasks for the deliveries to point at.
    let tasks: Vec<Task> = (0..3)
        .map(|i| whole_task(100 + i, &format!("pid-{i}")))
        .collect();
    for table in Table::ALL {
        if table == Table::Tasks {
            let added = repo.add_tasks(&tasks).await.unwrap();
            assert_eq!(added.inserted, 3);
            continue;
        }
        // Written out of order; read back in key order, every value as written.
        let rows: Vec<CellRow> = ["k-b", "k-a", "k-c"]
            .iter()
            .zip(0..)
            .map(|(key, n)| sample(table, key, n, tasks[n as usize].id.as_str()))
            .collect();
        let added = repo.add_rows(table, &rows).await.unwrap();
        assert_eq!((added.inserted, added.present), (3, 0), "{table:?}");
        assert!(added.refused.is_empty(), "{table:?}");
        assert_eq!(repo.count_rows(table).await.unwrap(), 3, "{table:?}");
        let mut expected = rows.clone();
        expected.sort_by(|a, b| {
            let key = |r: &CellRow| (r[0].to_string(), r[1].to_string());
            match table {
                Table::IdempotencyKeys | Table::CreditSpend => key(a).cmp(&key(b)),
                _ => a[0].to_string().cmp(&b[0].to_string()),
            }
        });
        assert_eq!(read_all(repo, table).await, expected, "{table:?}");
        // The same keys with other values: the rows held are kept as they are.
        let changed: Vec<CellRow> = ["k-a", "k-b", "k-c"]
            .iter()
            .map(|key| sample(table, key, 7, tasks[2].id.as_str()))
            .collect();
        let added = repo.add_rows(table, &changed).await.unwrap();
        assert_eq!((added.inserted, added.present), (0, 3), "{table:?}");
        assert_eq!(read_all(repo, table).await, expected, "{table:?}");
    }
    // A delivery whose task the database lacks is named, and nothing else is lost.
    let orphan = sample(
        Table::WebhookDeliveries,
        "k-orphan",
        1,
        TaskId::new().as_str(),
    );
    let added = repo
        .add_rows(Table::WebhookDeliveries, &[orphan])
        .await
        .unwrap();
    assert_eq!(added.inserted + added.present, 0);
    assert_eq!(added.refused.len(), 1);
    assert_eq!(added.refused[0].0, "k-orphan");
    assert_eq!(repo.count_rows(Table::WebhookDeliveries).await.unwrap(), 3);
}

pub async fn tasks_are_read_by_id_and_written_whole(repo: &dyn Repo) {
    let mut tasks: Vec<Task> = (0..5)
        .map(|i| whole_task(100 + i, &format!("pid-{i}")))
        .collect();
    tasks[1].provider_task_id = None;
    tasks[2].owner = None;
    tasks[2].state = TaskState::Queued;
    let added = repo.add_tasks(&tasks).await.unwrap();
    assert_eq!((added.inserted, added.present), (5, 0));
    tasks.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
    let mut read: Vec<Task> = Vec::new();
    loop {
        let page = repo
            .tasks_after(read.last().map(|t| &t.id), 2)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        read.extend(page);
    }
    assert_eq!(read, tasks, "every column, by id");
    assert_eq!(repo.count_rows(Table::Tasks).await.unwrap(), 5);
    // Held ids are kept as they are; a new id whose provider id is taken is named.
    let stale = Task {
        state: TaskState::Canceled,
        ..tasks[0].clone()
    };
    let twin = whole_task(200, "pid-3");
    let added = repo.add_tasks(&[stale, twin.clone()]).await.unwrap();
    assert_eq!((added.inserted, added.present), (0, 1));
    assert_eq!(added.refused.len(), 1);
    assert_eq!(added.refused[0].0, twin.id.as_str());
    assert_eq!(repo.get(&tasks[0].id).await.unwrap().unwrap(), tasks[0]);
    assert!(repo.get(&twin.id).await.unwrap().is_none());
}
