//! Mapping between SQLite rows and the repository's types: reading tasks and batches
//! from rows, and writing new tasks (with their webhook deliveries) as rows.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::batches::Batch;
use super::repo::{NewTask, RepoError, Task};
use crate::domain::TaskId;
use crate::domain::task_row::Failover;

fn json_list(id: &str, raw: &str) -> Result<Vec<String>, RepoError> {
    serde_json::from_str(raw).map_err(|e| RepoError::Corrupt {
        id: id.to_owned(),
        message: format!("bad JSON list: {e}"),
    })
}

pub(super) fn to_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".to_owned())
}

pub(super) fn task_from_row(row: &SqliteRow) -> Result<Task, RepoError> {
    let id: String = row.try_get("id")?;
    let corrupt = |message: String| RepoError::Corrupt {
        id: id.clone(),
        message,
    };
    let state: String = row.try_get("state")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(Task {
        id: TaskId::parse(&id).ok_or_else(|| corrupt("bad id".to_owned()))?,
        state: state.parse().map_err(corrupt)?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        prompt: row.try_get("prompt")?,
        source: row.try_get("source")?,
        image_url: row.try_get("image_url")?,
        input_urls: json_list(&id, row.try_get("input_urls")?)?,
        aspect_ratio: row.try_get("aspect_ratio")?,
        output_format: row.try_get("output_format")?,
        priority: row.try_get("priority")?,
        batch_id: row.try_get("batch_id")?,
        owner: row.try_get("owner")?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        run_at: row.try_get("run_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        provider_task_id: row.try_get("provider_task_id")?,
        callback_token_hash: row.try_get("callback_token_hash")?,
        callback_at: row.try_get("callback_at")?,
        result_source_urls: json_list(&id, row.try_get("result_source_urls")?)?,
        result_keys: json_list(&id, row.try_get("result_keys")?)?,
        result_urls: json_list(&id, row.try_get("result_urls")?)?,
        credits: row.try_get("credits")?,
        cost_time_ms: row.try_get("cost_time_ms")?,
        error_code: row.try_get("error_code")?,
        error_message: row.try_get("error_message")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        submitted_at: row.try_get("submitted_at")?,
        completed_at: row.try_get("completed_at")?,
        retry_of: row
            .try_get::<Option<String>, _>("retry_of")?
            .and_then(|id| TaskId::parse(&id)),
        webhook_url: row.try_get("webhook_url")?,
        missing_answers: u32::try_from(row.try_get::<i64, _>("missing_answers")?).unwrap_or(0),
        failover: Failover {
            allowed: row.try_get::<Option<i64>, _>("fallback")?.map(|v| v != 0),
            left: Failover::parse_left(row.try_get("moved_from")?),
            reason: row.try_get("move_reason")?,
            moved_at: row.try_get("moved_at")?,
        },
    })
}

/// Inserts tasks inside an open transaction.
pub(super) async fn insert_tasks(
    conn: &mut SqliteConnection,
    tasks: &[NewTask],
) -> Result<(), sqlx::Error> {
    for t in tasks {
        sqlx::query(
            "INSERT INTO tasks (id, state, provider, model, prompt, source, image_url, input_urls,
                    aspect_ratio, output_format, priority, batch_id, owner, run_at,
                    callback_token_hash, created_at, updated_at, retry_of, webhook_url, fallback)
                 VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.id.as_str())
        .bind(&t.provider)
        .bind(&t.model)
        .bind(&t.prompt)
        .bind(&t.source)
        .bind(&t.image_url)
        .bind(to_json(&t.input_urls))
        .bind(&t.aspect_ratio)
        .bind(&t.output_format)
        .bind(t.priority)
        .bind(&t.batch_id)
        .bind(&t.owner)
        .bind(t.created_at)
        .bind(&t.callback_token_hash)
        .bind(t.created_at)
        .bind(t.created_at)
        .bind(t.retry_of.as_ref().map(TaskId::as_str))
        .bind(&t.webhook_url)
        .bind(t.fallback.map(i64::from))
        .execute(&mut *conn)
        .await?;
        if let Some(url) = &t.webhook_url {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, task_id, url, run_at, created_at)
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(format!("msg_{}", uuid::Uuid::now_v7().simple()))
            .bind(t.id.as_str())
            .bind(url)
            .bind(t.created_at)
            .bind(t.created_at)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

pub(super) fn batch_from_row(row: &SqliteRow) -> Result<Batch, RepoError> {
    Ok(Batch {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        prompt: row.try_get("prompt")?,
        webhook_url: row.try_get("webhook_url")?,
        total: row.try_get("total")?,
        created_at: row.try_get("created_at")?,
    })
}

pub(super) fn tasks_from_rows(rows: &[SqliteRow]) -> Result<Vec<Task>, RepoError> {
    rows.iter().map(task_from_row).collect()
}

/// Writes a whole task row as it is, unless its id or its provider id is taken (then
/// nothing is written and the answer is false).
pub(super) async fn restore_task(
    conn: &mut SqliteConnection,
    t: &Task,
) -> Result<bool, sqlx::Error> {
    let done = super::update_sql::restore_insert(std::slice::from_ref(t), to_json)
        .build()
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
