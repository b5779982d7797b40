//! Prefixed, time-sortable identifiers (`tsk_` + UUIDv7).

use std::fmt;

use serde::{Deserialize, Serialize};

/// darkroom's own task id: `tsk_` followed by a simple (dash-less) UUIDv7, so ids sort by
/// creation time and never collide with a provider's id format.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(
    value_type = String,
    pattern = "^tsk_[0-9a-f]{32}$",
    example = "tsk_019a7c3e5b2f7d10a3c4e5f60718293a"
)]
pub struct TaskId(String);

const TASK_PREFIX: &str = "tsk_";

impl TaskId {
    pub fn new() -> Self {
        Self(format!("{TASK_PREFIX}{}", uuid::Uuid::now_v7().simple()))
    }

    /// Accepts only the exact shape darkroom generates, so a provider id or junk is never
    /// mistaken for one of ours.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix(TASK_PREFIX)?;
        let ok = hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TaskId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or_else(|| format!("not a darkroom task id: {s}"))
    }
}

impl From<TaskId> for String {
    fn from(id: TaskId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_parse_and_sort_by_time() {
        let a = TaskId::new();
        let b = TaskId::new();
        assert_eq!(TaskId::parse(a.as_str()), Some(a.clone()));
        assert!(a < b);
    }

    #[test]
    fn foreign_ids_are_refused() {
        for s in [
            "test123",
            "tsk_",
            "tsk_XYZ",
            "e989621f54392584b05867f87b160672",
            "tsk_0123",
        ] {
            assert!(TaskId::parse(s).is_none(), "{s}");
        }
    }
}
