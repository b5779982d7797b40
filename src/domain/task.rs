//! The task lifecycle as a pure state machine.
//!
//! `queued → submitting → submitted → running → ingesting → succeeded`, with `failed`,
//! `canceled` and `expired` as the other terminal states. Storage applies a transition only
//! when the row is still in the state the transition was computed from, so this function
//! plus that guard is the whole concurrency story for task state.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

// Ordered as the lifecycle lists them (so it can key sorted maps).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting in the queue for the dispatcher.
    Queued,
    /// Claimed by a dispatcher that is calling the provider right now.
    Submitting,
    /// The provider has the task (or may have it, after an ambiguous create).
    Submitted,
    /// The provider reported it is generating.
    Running,
    /// The provider finished; results are being copied into the bucket.
    Ingesting,
    Succeeded,
    Failed,
    Canceled,
    Expired,
}

/// The four words the original service used on its compatible endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompatStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl CompatStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

impl TaskState {
    pub const ALL: [TaskState; 9] = [
        Self::Queued,
        Self::Submitting,
        Self::Submitted,
        Self::Running,
        Self::Ingesting,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitting => "submitting",
            Self::Submitted => "submitted",
            Self::Running => "running",
            Self::Ingesting => "ingesting",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Expired
        )
    }

    pub fn compat(self) -> CompatStatus {
        match self {
            Self::Queued | Self::Submitting | Self::Submitted => CompatStatus::Pending,
            Self::Running | Self::Ingesting => CompatStatus::Processing,
            Self::Succeeded => CompatStatus::Completed,
            Self::Failed | Self::Canceled | Self::Expired => CompatStatus::Failed,
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown task state {s:?}"))
    }
}

/// Something that happened to a task. Each maps to at most one transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A dispatcher took the task from the queue.
    Claimed,
    /// The provider accepted the task and gave its id.
    Accepted,
    /// The provider refused for a reason that may pass (rate limit, 5xx): back to the queue.
    RetryLater,
    /// The provider refused for good (validation, auth): the task fails.
    Rejected,
    /// The create request may or may not have reached the provider (timeout after sending, or
    /// the dispatcher died mid-call). Never resubmitted blindly: a callback or the deadline
    /// settles it.
    Ambiguous,
    /// The provider says it is still working.
    ProviderProgress,
    /// The provider says it finished with results.
    ProviderSucceeded,
    /// The provider says it failed.
    ProviderFailed,
    /// Every result is in the bucket.
    Ingested,
    /// Results could not be copied before the retries ran out.
    IngestFailed,
    /// The client canceled the task.
    Cancel,
    /// The deadline passed without an answer from the provider.
    Expire,
    /// An unconfirmed create is submitted again, because the operator opted in to the risk
    /// of paying twice.
    Resubmit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} does not apply to a task in state {from}")]
pub struct TransitionError {
    pub from: TaskState,
    pub event: Event,
}

/// The next state for `event` in state `from`, or an error when the event does not apply.
/// A terminal state accepts no event at all.
pub fn transition(from: TaskState, event: Event) -> Result<TaskState, TransitionError> {
    use Event as E;
    use TaskState as S;
    let next = match (from, event) {
        (S::Queued, E::Claimed) => S::Submitting,
        (S::Submitting, E::Accepted | E::Ambiguous) => S::Submitted,
        (S::Submitting, E::RetryLater) => S::Queued,
        (S::Submitting, E::Rejected) => S::Failed,
        (S::Submitted | S::Running, E::ProviderProgress) => S::Running,
        // A callback may beat the create answer (the provider is fast, our write is not), so a
        // task still `submitting` may already learn its outcome.
        (S::Submitting | S::Submitted | S::Running, E::ProviderSucceeded) => S::Ingesting,
        (S::Submitting | S::Submitted | S::Running, E::ProviderFailed) => S::Failed,
        (S::Ingesting, E::Ingested) => S::Succeeded,
        (S::Ingesting, E::IngestFailed) => S::Failed,
        (S::Submitted | S::Running, E::Expire) => S::Expired,
        (S::Submitted, E::Resubmit) => S::Queued,
        (state, E::Cancel) if !state.is_terminal() => S::Canceled,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EVENTS: [Event; 13] = [
        Event::Claimed,
        Event::Accepted,
        Event::RetryLater,
        Event::Rejected,
        Event::Ambiguous,
        Event::ProviderProgress,
        Event::ProviderSucceeded,
        Event::ProviderFailed,
        Event::Ingested,
        Event::IngestFailed,
        Event::Cancel,
        Event::Expire,
        Event::Resubmit,
    ];

    fn any_state() -> impl Strategy<Value = TaskState> {
        proptest::sample::select(TaskState::ALL.to_vec())
    }

    fn any_event() -> impl Strategy<Value = Event> {
        proptest::sample::select(EVENTS.to_vec())
    }

    proptest! {
        #[test]
        fn no_transition_leaves_a_terminal_state(from in any_state(), event in any_event()) {
            if from.is_terminal() {
                prop_assert!(transition(from, event).is_err());
            }
        }

        #[test]
        fn any_event_sequence_keeps_terminal_states_terminal(
            events in proptest::collection::vec(any_event(), 0..40)
        ) {
            let mut state = TaskState::Queued;
            let mut terminal_seen: Option<TaskState> = None;
            for event in events {
                if let Ok(next) = transition(state, event) {
                    prop_assert!(terminal_seen.is_none(), "left terminal {terminal_seen:?} by {event:?}");
                    state = next;
                }
                if state.is_terminal() {
                    terminal_seen.get_or_insert(state);
                }
            }
        }

        #[test]
        fn compat_status_of_terminal_states_is_final(state in any_state()) {
            let compat = state.compat();
            prop_assert_eq!(
                state.is_terminal(),
                matches!(compat, CompatStatus::Completed | CompatStatus::Failed)
            );
        }
    }

    #[test]
    fn the_happy_path() {
        let mut state = TaskState::Queued;
        for event in [
            Event::Claimed,
            Event::Accepted,
            Event::ProviderProgress,
            Event::ProviderSucceeded,
            Event::Ingested,
        ] {
            state = transition(state, event).unwrap();
        }
        assert_eq!(state, TaskState::Succeeded);
        assert_eq!(state.compat().as_str(), "completed");
    }

    #[test]
    fn states_round_trip_through_strings() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>(), Ok(state));
        }
    }
}
