//! A task as stored: the row every layer reads (the repository writes it, the views show
//! it, the engine moves it). Times are Unix milliseconds.

use super::{TaskId, TaskState};

/// A task as stored. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub state: TaskState,
    pub provider: String,
    pub model: String,
    pub prompt: String,
    /// What the client named as the source: an upload key or a URL (`sourceKey`).
    pub source: String,
    /// The source image's URL as handed to the provider (`imageUrl`).
    pub image_url: String,
    /// Every image URL sent with the task: the source first, then shared references.
    pub input_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    pub priority: i32,
    pub batch_id: Option<String>,
    pub owner: Option<String>,
    pub attempts: u32,
    pub run_at: i64,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub provider_task_id: Option<String>,
    pub callback_token_hash: String,
    pub callback_at: Option<i64>,
    /// Result URLs at the provider, waiting to be copied.
    pub result_source_urls: Vec<String>,
    pub result_keys: Vec<String>,
    pub result_urls: Vec<String>,
    pub credits: Option<i64>,
    pub cost_time_ms: Option<i64>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub submitted_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// The failed or expired task this one retries.
    pub retry_of: Option<TaskId>,
    /// Where its completion or failure is POSTed (its own, or its batch's).
    pub webhook_url: Option<String>,
    /// The provider's "no such task" answers in a row since it accepted the task.
    pub missing_answers: u32,
    /// Whether it may move to another provider, and where it has been.
    pub failover: Failover,
}

/// A task's provider failover: whether its request allowed it and the moves it made. A task
/// moves only while its create is known not to have been made, and never back to a
/// provider it left.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failover {
    /// The request's `fallback`; `None` follows the operator's default.
    pub allowed: Option<bool>,
    /// The providers it left, in order (the last is the one it moved from last).
    pub left: Vec<String>,
    /// Why it last moved (`credits`, `credit_floor`, `failing`, `attempts`).
    pub reason: Option<String>,
    /// When it last moved.
    pub moved_at: Option<i64>,
}

impl Failover {
    /// The providers left, as stored: comma-separated (names have no commas).
    pub fn left_text(&self) -> String {
        self.left.join(",")
    }

    /// The stored form of [`Failover::left`] read back.
    pub fn parse_left(text: &str) -> Vec<String> {
        text.split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The stored form of [`Failover::allowed`]: 1, 0 or NULL.
    pub fn allowed_int(&self) -> Option<i64> {
        self.allowed.map(i64::from)
    }
}

/// A task about to be queued.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: TaskId,
    pub provider: String,
    pub model: String,
    pub prompt: String,
    pub source: String,
    pub image_url: String,
    pub input_urls: Vec<String>,
    pub aspect_ratio: String,
    pub output_format: String,
    pub priority: i32,
    pub batch_id: Option<String>,
    pub owner: Option<String>,
    pub callback_token_hash: String,
    pub created_at: i64,
    pub retry_of: Option<TaskId>,
    /// A delivery row is written with the task when set.
    pub webhook_url: Option<String>,
    /// The request's `fallback`: `None` follows the operator's failover default.
    pub fallback: Option<bool>,
}

impl NewTask {
    /// The row its insert makes: queued, due at once, nothing tried yet.
    pub fn as_queued(&self) -> Task {
        Task {
            id: self.id.clone(),
            state: TaskState::Queued,
            provider: self.provider.clone(),
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            source: self.source.clone(),
            image_url: self.image_url.clone(),
            input_urls: self.input_urls.clone(),
            aspect_ratio: self.aspect_ratio.clone(),
            output_format: self.output_format.clone(),
            priority: self.priority,
            batch_id: self.batch_id.clone(),
            owner: self.owner.clone(),
            attempts: 0,
            run_at: self.created_at,
            lease_owner: None,
            lease_until: None,
            provider_task_id: None,
            callback_token_hash: self.callback_token_hash.clone(),
            callback_at: None,
            result_source_urls: Vec::new(),
            result_keys: Vec::new(),
            result_urls: Vec::new(),
            credits: None,
            cost_time_ms: None,
            error_code: None,
            error_message: None,
            created_at: self.created_at,
            updated_at: self.created_at,
            submitted_at: None,
            completed_at: None,
            retry_of: self.retry_of.clone(),
            webhook_url: self.webhook_url.clone(),
            missing_answers: 0,
            failover: Failover {
                allowed: self.fallback,
                ..Failover::default()
            },
        }
    }
}
