//! The archive record of a task in the bucket, `kie-tasks/{taskId}.json`: everything but
//! secrets and leases, typed so its fields cannot drift.

use bytes::Bytes;
use serde::Serialize;

use super::status_answer::error_text;
use crate::domain::TaskId;
use crate::domain::task_row::Task;
use crate::domain::time::iso_time;

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
    };
    Bytes::from(serde_json::to_vec_pretty(&record).unwrap_or_default())
}
