//! What `Idempotency-Key` keeps in the database: per owner and key, the fingerprint of the
//! request that first used it, who holds it while that request runs, and the answer it got.
//! In the database (not in memory) so a replay works after a restart and on every instance
//! sharing it.
//!
//! A key is reserved atomically (an insert under the unique `(owner, key)`), so of two
//! requests at once exactly one proceeds. The holder completes it with its answer or
//! releases it (a failure worth retrying). A reservation whose holder died is taken over
//! once `locked_until` has passed; a key past `expires_at` is forgotten (taken over on its
//! next use, or purged).

use async_trait::async_trait;

use super::{Batch, NewTask, RepoError};

/// A request asking for a key.
#[derive(Clone, Debug)]
pub struct IdempotencyClaim<'a> {
    /// The API key's name; empty when keys are off (the anonymous owner).
    pub owner: &'a str,
    pub key: &'a str,
    /// The request's fingerprint, when it is known before the work (JSON bodies); an
    /// upload's is known only once its body was read, and is stored with its answer.
    pub request_hash: Option<&'a str>,
    /// Names this holder: only it may complete or release the reservation.
    pub token: &'a str,
    pub now: i64,
    /// Until when the reservation is this holder's without an answer.
    pub locked_until: i64,
    /// When the key is forgotten if no answer ever comes (at least `locked_until`).
    pub expires_at: i64,
}

/// An answer kept for replay: its status and body (JSON).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What reserving a key came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The key was free (new, expired, or its holder died): the claim holds it now.
    Reserved,
    /// Another request holds it and has not answered yet.
    InFlight { request_hash: Option<String> },
    /// A request with this key was answered: replay it (when the fingerprints agree).
    Completed {
        request_hash: String,
        answer: StoredAnswer,
    },
}

/// The answer a holder records for its key.
#[derive(Clone, Debug)]
pub struct IdempotencyCompletion {
    pub owner: String,
    pub key: String,
    pub token: String,
    pub request_hash: String,
    pub answer: StoredAnswer,
    pub completed_at: i64,
    /// When the key and its answer are forgotten.
    pub expires_at: i64,
}

#[async_trait]
pub trait IdempotencyRepo: Send + Sync + 'static {
    /// Reserves `claim.key` for `claim.owner`, or says who has it: atomic, so of any number
    /// of concurrent claims (on any instance) exactly one gets [`Reservation::Reserved`].
    /// A key past its `expires_at`, or reserved and unanswered past its `locked_until`, is
    /// taken over.
    async fn reserve_idempotency_key(
        &self,
        claim: &IdempotencyClaim<'_>,
    ) -> Result<Reservation, RepoError>;

    /// Records the answer of the reservation `done.token` holds; `false` (nothing changed)
    /// when it holds none (taken over, released, or already answered).
    async fn complete_idempotency_key(
        &self,
        done: &IdempotencyCompletion,
    ) -> Result<bool, RepoError>;

    /// Queues `tasks` (and `batch`, when given) and records `done` in one transaction, so a
    /// crash can never leave tasks made without the answer that names them. `false`, with
    /// nothing written, when `done.token` no longer holds the reservation.
    async fn insert_answered(
        &self,
        batch: Option<&Batch>,
        tasks: &[NewTask],
        done: &IdempotencyCompletion,
    ) -> Result<bool, RepoError>;

    /// Gives the key up so a retry can proceed (the request failed or was interrupted);
    /// only the holder's unanswered reservation goes. `false` when there was none.
    async fn release_idempotency_key(
        &self,
        owner: &str,
        key: &str,
        token: &str,
    ) -> Result<bool, RepoError>;

    /// Removes up to `limit` keys past their `expires_at`; how many went.
    async fn purge_expired_idempotency_keys(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<u64, RepoError>;
}

/// How many times a reservation is tried when another claim keeps changing the row under
/// it (taken over, released or purged between the insert and the read).
pub(super) const RESERVE_ROUNDS: usize = 4;

/// A key's row as a reservation finds it.
pub(super) struct ExistingKey {
    pub request_hash: Option<String>,
    pub token: String,
    pub locked_until: i64,
    pub status: Option<i64>,
    pub body: Option<Vec<u8>>,
    pub expires_at: i64,
}

impl ExistingKey {
    /// `None` when the row is free to take over at `now` (expired, or its holder died
    /// before answering); otherwise what the claim is told.
    pub(super) fn standing(self, now: i64) -> Option<Reservation> {
        let answered = self.status.is_some();
        if self.expires_at <= now || (!answered && self.locked_until <= now) {
            return None;
        }
        Some(match (self.status, self.request_hash) {
            (Some(status), Some(request_hash)) => Reservation::Completed {
                request_hash,
                answer: StoredAnswer {
                    status: u16::try_from(status).unwrap_or(500),
                    body: self.body.unwrap_or_default(),
                },
            },
            (_, request_hash) => Reservation::InFlight { request_hash },
        })
    }
}
