//! The task model, its state machine, ids and validated request types. No I/O here.

pub mod api_key;
pub mod budget;
pub mod error_code;
pub mod ids;
pub mod image;
pub mod job_code;
pub mod request;
pub mod sanitize;
pub mod size;
pub mod stats;
pub mod task;
pub mod task_row;
pub mod time;
pub mod webhook;
pub mod whsec;

pub use error_code::ErrorCode;
pub use ids::TaskId;
pub use job_code::JobCode;
pub use task::{Event, TaskState, TransitionError};
