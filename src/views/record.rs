//! The archive record of a task in the bucket, `kie-tasks/{taskId}.json`: everything but
//! secrets and leases, typed so its fields cannot drift, and read back into a task row
//! (`darkroom reindex`) with [`task_from_record`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::status_answer::error_text;
use crate::domain::task_row::{Failover, Task};
use crate::domain::time::iso_time;
use crate::domain::{TaskId, TaskState};

/// The record's fields, in the order they are written.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub provider: String,
    pub provider_task_id: Option<String>,
    pub model: String,
    pub state: &'static str,
    pub status: &'static str,
    pub prompt: String,
    pub source_key: String,
    pub image_url: String,
    pub input_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    pub priority: i64,
    pub batch_id: Option<String>,
    pub attempts: i64,
    pub result_keys: Vec<String>,
    pub result_urls: Vec<String>,
    pub error: Option<String>,
    pub error_code: Option<String>,
    pub consume_credits: Option<i64>,
    pub cost_time_ms: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
    pub submitted_at: Option<String>,
    pub completed_at: Option<String>,
    /// Added after the first records: older records lack the fields below, and are read
    /// back without them (see [`task_from_record`]).
    pub owner: Option<String>,
    /// The stored error sentence as it is (`error` falls back to the code).
    pub error_message: Option<String>,
    /// When an unfinished task is next due (its `waiting.until`).
    pub run_at: String,
    pub retry_of: Option<TaskId>,
    /// The provider's result URLs while the task is `ingesting` (an interrupted ingest
    /// takes them up again), empty before and after.
    pub result_source_urls: Vec<String>,
    /// The request's `fallback` (absent: the operator's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<bool>,
    /// The providers it left (failover), in order; absent when it never moved.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub moved_from: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub move_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_at: Option<String>,
}

/// The record, serialized (pretty, for people reading the bucket).
pub fn task_record(task: &Task) -> Bytes {
    let record = TaskRecord {
        task_id: task.id.clone(),
        provider: task.provider.clone(),
        provider_task_id: task.provider_task_id.clone(),
        model: task.model.clone(),
        state: task.state.as_str(),
        status: task.state.compat().as_str(),
        prompt: task.prompt.clone(),
        source_key: task.source.clone(),
        image_url: task.image_url.clone(),
        input_urls: task.input_urls.clone(),
        aspect_ratio: task.aspect_ratio.clone(),
        output_format: task.output_format.clone(),
        priority: task.priority.into(),
        batch_id: task.batch_id.clone(),
        attempts: task.attempts.into(),
        result_keys: task.result_keys.clone(),
        result_urls: task.result_urls.clone(),
        error: error_text(task),
        error_code: task.error_code.clone(),
        consume_credits: task.credits,
        cost_time_ms: task.cost_time_ms,
        created_at: iso_time(task.created_at),
        updated_at: iso_time(task.updated_at),
        submitted_at: task.submitted_at.map(iso_time),
        completed_at: task.completed_at.map(iso_time),
        owner: task.owner.clone(),
        error_message: task.error_message.clone(),
        run_at: iso_time(task.run_at),
        retry_of: task.retry_of.clone(),
        result_source_urls: task.result_source_urls.clone(),
        fallback: task.failover.allowed,
        moved_from: task.failover.left.clone(),
        move_reason: task.failover.reason.clone(),
        moved_at: task.failover.moved_at.map(iso_time),
    };
    Bytes::from(serde_json::to_vec_pretty(&record).unwrap_or_default())
}

/// A record as read back: every field the writer ever wrote, the later ones optional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredRecord {
    task_id: String,
    provider: String,
    provider_task_id: Option<String>,
    model: String,
    state: String,
    prompt: String,
    source_key: String,
    image_url: String,
    #[serde(default)]
    input_urls: Vec<String>,
    aspect_ratio: String,
    output_format: String,
    #[serde(default)]
    priority: i32,
    batch_id: Option<String>,
    #[serde(default)]
    attempts: u32,
    #[serde(default)]
    result_keys: Vec<String>,
    #[serde(default)]
    result_urls: Vec<String>,
    error: Option<String>,
    error_code: Option<String>,
    consume_credits: Option<i64>,
    cost_time_ms: Option<i64>,
    created_at: String,
    updated_at: String,
    submitted_at: Option<String>,
    completed_at: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    run_at: Option<String>,
    #[serde(default)]
    retry_of: Option<String>,
    #[serde(default)]
    result_source_urls: Vec<String>,
    #[serde(default)]
    fallback: Option<bool>,
    #[serde(default)]
    moved_from: Vec<String>,
    #[serde(default)]
    move_reason: Option<String>,
    #[serde(default)]
    moved_at: Option<String>,
}

fn parse_time(field: &str, value: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{field} {value:?} is not a time: {e}"))
}

fn parse_opt_time(field: &str, value: Option<&str>) -> Result<Option<i64>, String> {
    value.map(|v| parse_time(field, v)).transpose()
}

/// The task row a record describes, as it was when the record was written. What the
/// record never holds comes back empty: no lease, no callback token (`""`),
/// no webhook URL. A record written before `owner`, `errorMessage`, `runAt`, `retryOf` and
/// `resultSourceUrls` were added gives no owner, no retried task, no result URLs at the
/// provider, the sentence from `error` (unless it is only the code) and `runAt` =
/// `updatedAt`.
pub fn task_from_record(bytes: &[u8]) -> Result<Task, String> {
    let r: StoredRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("not a record: {e}"))?;
    let id = TaskId::parse(&r.task_id).ok_or_else(|| format!("bad taskId {:?}", r.task_id))?;
    let state: TaskState = r.state.parse()?;
    let updated_at = parse_time("updatedAt", &r.updated_at)?;
    // Older records: `error` is the message, or the code when there was no message.
    let error_message = r.error_message.or_else(|| match (&r.error, &r.error_code) {
        (Some(error), Some(code)) if error == code => None,
        (error, _) => error.clone(),
    });
    Ok(Task {
        id,
        state,
        provider: r.provider,
        model: r.model,
        prompt: r.prompt,
        source: r.source_key,
        image_url: r.image_url,
        input_urls: r.input_urls,
        aspect_ratio: r.aspect_ratio,
        output_format: r.output_format,
        priority: r.priority,
        batch_id: r.batch_id,
        owner: r.owner,
        attempts: r.attempts,
        run_at: parse_opt_time("runAt", r.run_at.as_deref())?.unwrap_or(updated_at),
        lease_owner: None,
        lease_until: None,
        provider_task_id: r.provider_task_id,
        callback_token_hash: String::new(),
        callback_at: None,
        result_source_urls: r.result_source_urls,
        result_keys: r.result_keys,
        result_urls: r.result_urls,
        credits: r.consume_credits,
        cost_time_ms: r.cost_time_ms,
        error_code: r.error_code,
        error_message,
        created_at: parse_time("createdAt", &r.created_at)?,
        updated_at,
        submitted_at: parse_opt_time("submittedAt", r.submitted_at.as_deref())?,
        completed_at: parse_opt_time("completedAt", r.completed_at.as_deref())?,
        retry_of: r.retry_of.as_deref().and_then(TaskId::parse),
        webhook_url: None,
        missing_answers: 0,
        failover: Failover {
            allowed: r.fallback,
            left: r.moved_from,
            reason: r.move_reason,
            moved_at: parse_opt_time("movedAt", r.moved_at.as_deref())?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> Task {
        Task {
            id: TaskId::new(),
            state: TaskState::Failed,
            provider: "kie".into(),
            model: "google/nano-banana-edit".into(),
            prompt: "a cat".into(),
            source: "uploads/a.png".into(),
            image_url: "http://x/uploads/a.png".into(),
            input_urls: vec!["http://x/uploads/a.png".into(), "http://x/b.png".into()],
            aspect_ratio: "16:9".into(),
            output_format: "jpeg".into(),
            priority: 3,
            batch_id: Some("bat_1".into()),
            owner: Some("alice".into()),
            attempts: 2,
            run_at: 1_700_000_000_123,
            lease_owner: Some("w".into()),
            lease_until: Some(1),
            provider_task_id: Some("kie-1".into()),
            callback_token_hash: "secret".into(),
            callback_at: Some(5),
            result_source_urls: vec!["http://p/r.png".into()],
            result_keys: vec!["generated/kie-x-0.png".into()],
            result_urls: vec!["http://x/generated/kie-x-0.png".into()],
            credits: Some(4),
            cost_time_ms: Some(12_000),
            error_code: Some("provider_500".into()),
            error_message: Some("KIE failed".into()),
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_100,
            submitted_at: Some(1_700_000_000_050),
            completed_at: Some(1_700_000_000_090),
            retry_of: Some(TaskId::new()),
            webhook_url: Some("http://hook".into()),
            missing_answers: 1,
            failover: Failover {
                allowed: Some(true),
                left: vec!["gemini".into()],
                reason: Some("attempts".into()),
                moved_at: Some(1_700_000_000_020),
            },
        }
    }

    #[test]
    fn a_record_reads_back_as_its_task_without_secrets_or_leases() {
        let task = task();
        let back = task_from_record(&task_record(&task)).unwrap();
        let expected = Task {
            lease_owner: None,
            lease_until: None,
            callback_token_hash: String::new(),
            callback_at: None,
            webhook_url: None,
            missing_answers: 0,
            ..task
        };
        assert_eq!(back, expected);
    }

    #[test]
    fn a_record_written_before_the_later_fields_still_reads() {
        let task = task();
        let mut value: serde_json::Value = serde_json::from_slice(&task_record(&task)).unwrap();
        for field in [
            "owner",
            "errorMessage",
            "runAt",
            "retryOf",
            "resultSourceUrls",
        ] {
            value.as_object_mut().unwrap().remove(field);
        }
        let back = task_from_record(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(back.owner, None);
        assert_eq!(back.retry_of, None);
        assert_eq!(back.run_at, task.updated_at);
        assert_eq!(back.error_message.as_deref(), Some("KIE failed"));
        // Only a code: the sentence was the code, and no message comes back.
        value["error"] = value["errorCode"].clone();
        let back = task_from_record(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(back.error_message, None);
        assert!(task_from_record(b"{}").is_err());
    }
}
