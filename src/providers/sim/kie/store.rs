//! The task store: every task, result file and credit behind one briefly held lock, and
//! the task record as KIE reports it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Map, Value, json};

use super::KieSim;
use super::generation::InputError;
use super::request::CreateRequest;

/// Every account starts with this balance; each successful image costs
/// `CREDITS_PER_IMAGE` (nano-banana's price on KIE).
pub(super) const INITIAL_CREDITS: u64 = 100_000;
pub(super) const CREDITS_PER_IMAGE: u64 = 4;

/// Generated files are kept in memory; past this total the oldest are forgotten (their
/// URLs then 404, like KIE's expiring result URLs) so a long-running demo stays bounded.
const FILE_STORE_CAP_BYTES: usize = 256 * 1024 * 1024;

const INTERNAL_ERROR_MSG: &str = "Internal server error";

/// Everything mutable, behind one lock that is only ever held briefly.
#[derive(Default)]
pub(super) struct Ledger {
    /// Accepted creates in the last rate window, for `max_creates_in_window` (kept even
    /// when the limit is off).
    pub(super) accepted_window: VecDeque<Instant>,
    /// Accepted creates per callback URL (without its query), to spot double creates.
    pub(super) creates_per_callback: HashMap<String, u32>,
    pub(super) tasks: HashMap<String, Task>,
    pub(super) order: Vec<String>,
    pub(super) recent_creates: VecDeque<Instant>,
    pub(super) files: HashMap<String, StoredFile>,
    pub(super) file_order: VecDeque<String>,
    pub(super) file_bytes: usize,
    pub(super) credits_used: u64,
    /// Tasks accepted and not finished, whose credits are spoken for.
    pub(super) credits_reserved: u64,
    pub(super) initial_credits: u64,
}

pub(super) struct StoredFile {
    pub(super) bytes: Bytes,
    pub(super) content_type: &'static str,
}

pub(super) struct Task {
    pub(super) model: &'static str,
    pub(super) param: String,
    pub(super) callback_url: Option<String>,
    pub(super) state: TaskState,
    pub(super) started: Instant,
    pub(super) create_time_ms: i64,
    pub(super) update_time_ms: i64,
    pub(super) complete_time_ms: Option<i64>,
    pub(super) cost: Option<Duration>,
    pub(super) result_urls: Vec<String>,
    pub(super) failure: Option<Failure>,
    pub(super) credits: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TaskState {
    Waiting,
    Generating,
    Success,
    Fail,
}

impl TaskState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Generating => "generating",
            Self::Success => "success",
            Self::Fail => "fail",
        }
    }
}

/// Why a task failed, as KIE reports it (`failCode` is a string there).
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn internal() -> Self {
        Self {
            code: "500",
            message: INTERNAL_ERROR_MSG.to_owned(),
        }
    }

    pub(super) fn bad_input(error: &InputError) -> Self {
        Self {
            code: "400",
            message: error.to_string(),
        }
    }
}

/// Which reading of a task is being built: KIE reports `costTime` in seconds in
/// callbacks and in milliseconds in `recordInfo`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum View {
    Callback,
    Query,
}

impl Ledger {
    pub(super) fn remaining_credits(&self) -> u64 {
        self.initial_credits.saturating_sub(self.credits_used)
    }

    /// What `chat/credit` answers: the balance less what tasks in progress will cost (held
    /// at the create, as an account holds them): what the next create can draw on.
    pub(super) fn available_credits(&self) -> u64 {
        self.remaining_credits()
            .saturating_sub(self.credits_reserved)
    }

    pub(super) fn store_file(&mut self, name: String, file: StoredFile) {
        self.file_bytes += file.bytes.len();
        self.file_order.push_back(name.clone());
        if let Some(replaced) = self.files.insert(name, file) {
            self.file_bytes -= replaced.bytes.len();
        }
        while self.file_bytes > FILE_STORE_CAP_BYTES {
            let Some(oldest) = self.file_order.pop_front() else {
                break;
            };
            if let Some(evicted) = self.files.remove(&oldest) {
                self.file_bytes -= evicted.bytes.len();
            }
        }
    }
}

impl Task {
    pub(super) fn new(request: &CreateRequest, started: Instant) -> Self {
        let now = now_ms();
        Self {
            model: request.model,
            param: request.param.clone(),
            callback_url: request.callback_url.clone(),
            state: TaskState::Waiting,
            started,
            create_time_ms: now,
            update_time_ms: now,
            complete_time_ms: None,
            cost: None,
            result_urls: Vec::new(),
            failure: None,
            credits: 0,
        }
    }
}

impl KieSim {
    pub(super) fn task_view(&self, task_id: &str) -> Option<Value> {
        let ledger = self.ledger();
        let task = ledger.tasks.get(task_id)?;
        Some(task_data(
            task_id,
            task,
            ledger.remaining_credits(),
            View::Query,
        ))
    }
}

/// The task record as KIE reports it. `completeTime` and `costTime` are null until the
/// task ends; `resultJson` appears only on success; `recordInfo` always carries
/// `failCode`/`failMsg` (empty strings when none), callbacks only on failure.
pub(super) fn task_data(task_id: &str, task: &Task, remained_credits: u64, view: View) -> Value {
    let cost_time = task.cost.map(|cost| match view {
        View::Callback => (cost.as_millis() + 500) / 1000,
        View::Query => cost.as_millis(),
    });
    let mut data = Map::new();
    data.insert("taskId".into(), json!(task_id));
    data.insert("model".into(), json!(task.model));
    data.insert("state".into(), json!(task.state.as_str()));
    data.insert("param".into(), json!(task.param));
    data.insert("createTime".into(), json!(task.create_time_ms));
    data.insert("updateTime".into(), json!(task.update_time_ms));
    data.insert("completeTime".into(), json!(task.complete_time_ms));
    data.insert("costTime".into(), json!(cost_time));
    data.insert("consumeCredits".into(), json!(task.credits));
    data.insert("remainedCredits".into(), json!(remained_credits));
    if task.state == TaskState::Success {
        let result = json!({ "resultUrls": task.result_urls });
        data.insert("resultJson".into(), json!(result.to_string()));
    }
    if view == View::Query || task.failure.is_some() {
        let (code, msg) = task
            .failure
            .as_ref()
            .map_or(("", ""), |failure| (failure.code, failure.message.as_str()));
        data.insert("failCode".into(), json!(code));
        data.insert("failMsg".into(), json!(msg));
    }
    Value::Object(data)
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
