//! A provider's limits as every instance and every restart sees them: the sliding window of
//! creates (KIE's 20 per 10 s), the cap on tasks in flight and the pause after a 429 or a
//! 402 (or while the credit balance is below the floor) live in the database, not in one
//! process's memory.
//!
//! A claim of queued tasks under limits is one transaction, serialized per provider across
//! instances (SQLite has one writer; PostgreSQL takes a transaction-scoped advisory lock
//! named after the provider): it reads the pause, the creates reserved in the window and
//! the tasks in flight, claims at most what is left, and records the claimed tasks as one
//! reservation in the window. A reservation is made before any create is sent and is
//! never given back, so N instances together, and a process restarted after a crash, stay
//! within the window even when creates fail. Times are each instance's wall clock in
//! milliseconds: instances sharing a database keep their clocks in sync (NTP), as leases
//! already require.

use async_trait::async_trait;

use super::{RepoError, Task};

/// One provider's limits; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CreateLimits {
    /// Creates in any window of `window_ms`.
    pub creates: usize,
    pub window_ms: i64,
    /// Tasks submitting, submitted or running at once.
    pub max_in_flight: usize,
}

impl CreateLimits {
    /// Neither a create window nor an in-flight cap: a plain claim will do.
    pub fn is_unlimited(&self) -> bool {
        self.creates == 0 && self.max_in_flight == 0
    }
}

/// A claim of queued tasks within a provider's limits.
#[derive(Clone, Debug)]
pub struct LimitedClaimRequest<'a> {
    pub provider: &'a str,
    pub now: i64,
    /// At most this many (the caller's free call slots).
    pub wanted: usize,
    pub worker: &'a str,
    pub lease_until: i64,
    pub limits: CreateLimits,
}

/// Creates reserved at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub at: i64,
    pub slots: usize,
}

/// A provider's pause, shared by every instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedPause {
    pub until: i64,
    /// `429`, `402` or `credit_floor`.
    pub code: String,
    pub reason: String,
}

/// What a limited claim found and took.
#[derive(Clone, Debug, Default)]
pub struct LimitedClaim {
    /// Claimed, in queue order, now `submitting` under the worker's lease.
    pub tasks: Vec<Task>,
    /// Every reservation in the window after the claim (this one included), oldest first;
    /// empty without a create window.
    pub window: Vec<Reserved>,
    /// The running pause: nothing was claimed.
    pub pause: Option<SharedPause>,
}

#[async_trait]
pub trait LimitsRepo: Send + Sync + 'static {
    /// Claims up to `wanted` queued tasks of the provider (in the order of
    /// [`TaskRepo::claim_queued`](super::TaskRepo::claim_queued)), no more than the create
    /// window and the in-flight cap leave, and none while the provider is paused; the
    /// claimed tasks are reserved in the window. Atomic, and serialized per provider across
    /// every instance sharing the database.
    async fn claim_within_limits(
        &self,
        request: &LimitedClaimRequest<'_>,
    ) -> Result<LimitedClaim, RepoError>;

    /// Moves one create slot of the claim made at `claimed_at` to `sent_at`, when its create
    /// is about to be sent: the provider counts a create when it arrives, so the window is
    /// counted from the send, not from the claim (a slot only ever moves later, so no claim
    /// can find more room for it). Counted at `sent_at` even when the claim's row is gone.
    async fn stamp_create(
        &self,
        provider: &str,
        claimed_at: i64,
        sent_at: i64,
    ) -> Result<(), RepoError>;

    /// Gives back one create slot of the claim made at `claimed_at` whose task was not
    /// sent after all (its budget was spent); whether there was one to give back.
    async fn return_create(&self, provider: &str, claimed_at: i64) -> Result<bool, RepoError>;

    /// Pauses the provider until `pause.until`, unless a pause already lasts longer;
    /// whether this started or extended it.
    async fn pause_provider(&self, provider: &str, pause: &SharedPause) -> Result<bool, RepoError>;

    /// Ends the provider's pause if its code is `code` (the credit floor's, once a reading
    /// is back above it); whether there was one to end.
    async fn lift_provider_pause(&self, provider: &str, code: &str) -> Result<bool, RepoError>;

    /// The provider's pause running at `now`, if any.
    async fn provider_pause(
        &self,
        provider: &str,
        now: i64,
    ) -> Result<Option<SharedPause>, RepoError>;
}

/// How many of `wanted` the limits leave, given the window's reservations and the tasks in
/// flight. Shared by both backends so they agree to the task.
pub(super) fn room_left(
    limits: &CreateLimits,
    wanted: usize,
    window: &[Reserved],
    in_flight: usize,
) -> usize {
    let mut room = wanted;
    if limits.creates > 0 {
        let used: usize = window.iter().map(|r| r.slots).sum();
        room = room.min(limits.creates.saturating_sub(used));
    }
    if limits.max_in_flight > 0 {
        room = room.min(limits.max_in_flight.saturating_sub(in_flight));
    }
    room
}

/// The SQL both backends run, with `?` placeholders (PostgreSQL's are numbered by
/// [`numbered`]).
pub(super) mod sql {
    pub const PAUSE: &str = "SELECT until_ms, code, reason FROM provider_pauses
         WHERE provider = ? AND until_ms > ?";
    pub const FORGET_OLD: &str = "DELETE FROM provider_creates WHERE provider = ? AND at <= ?";
    pub const WINDOW: &str = "SELECT at, slots FROM provider_creates
         WHERE provider = ? AND at > ? ORDER BY at ASC";
    pub const IN_FLIGHT: &str = "SELECT COUNT(*) FROM tasks
         WHERE provider = ? AND state IN ('submitting', 'submitted', 'running')";
    pub const STAMP_TAKE_SQLITE: &str = "UPDATE provider_creates SET slots = slots - 1
         WHERE rowid = (SELECT rowid FROM provider_creates
                         WHERE provider = ? AND at = ? AND slots > 0 LIMIT 1)";
    pub const STAMP_TAKE_POSTGRES: &str = "UPDATE provider_creates SET slots = slots - 1
         WHERE ctid = (SELECT ctid FROM provider_creates
                        WHERE provider = $1 AND at = $2 AND slots > 0 LIMIT 1 FOR UPDATE)";
    pub const RESERVE: &str = "INSERT INTO provider_creates (provider, at, slots) VALUES (?, ?, ?)";
    pub const PAUSE_UPSERT: &str = "INSERT INTO provider_pauses (provider, until_ms, code, reason)
         VALUES (?, ?, ?, ?)
         ON CONFLICT (provider) DO UPDATE
            SET until_ms = excluded.until_ms, code = excluded.code, reason = excluded.reason
          WHERE provider_pauses.until_ms < excluded.until_ms";
    pub const PAUSE_LIFT: &str = "DELETE FROM provider_pauses WHERE provider = ? AND code = ?";

    /// `?` placeholders numbered `$1`, `$2`, … for PostgreSQL.
    pub fn numbered(sql: &str) -> String {
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_the_least_of_what_each_limit_leaves() {
        let limits = CreateLimits {
            creates: 20,
            window_ms: 10_000,
            max_in_flight: 5,
        };
        let window = [Reserved { at: 1, slots: 18 }];
        assert_eq!(room_left(&limits, 10, &window, 0), 2);
        assert_eq!(room_left(&limits, 10, &[], 4), 1);
        assert_eq!(room_left(&limits, 10, &[], 7), 0);
        assert_eq!(room_left(&CreateLimits::default(), 10, &window, 99), 10);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            sql::numbered("a = ? AND b > ? OR c = ?"),
            "a = $1 AND b > $2 OR c = $3"
        );
    }
}
