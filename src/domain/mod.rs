//! The task model, its state machine, ids and validated request types. No I/O here.

pub mod api_key;
pub mod ids;
pub mod image;
pub mod request;
pub mod sanitize;
pub mod task;
pub mod webhook;
pub mod whsec;

pub use ids::TaskId;
pub use task::{Event, TaskState, TransitionError};
