//! A provider's credit balance: read by every instance with workers, periodically and at
//! once after a 402, from providers that report one (KIE's `chat/credit`); shown in
//! `/readyz` and as a gauge; and kept above a configured floor by pausing submission
//! (code `credit_floor`) before the provider refuses creates. The pause is shared through
//! the database like a 402's and lasts while readings stay below the floor: each reading
//! renews it, and the first reading back at or above the floor lifts it.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::circuit::provider_label;
use super::{Engine, Registered, now_ms};
use crate::providers::ProviderError;
use crate::telemetry::names;

/// The pause code of a balance below the floor.
pub const FLOOR_CODE: &str = "credit_floor";

/// A floor pause lasts this many reading intervals (at least [`MIN_FLOOR_PAUSE`]) unless a
/// reading renews or lifts it: a reading that is late or fails does not let it lapse, and
/// one whose instance stopped for good does not hold the provider forever.
const FLOOR_PAUSE_READINGS: u32 = 3;
const MIN_FLOOR_PAUSE: Duration = Duration::from_secs(60);

/// One reading of a balance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreditReading {
    pub balance: i64,
    /// When it was read (wall clock, ms).
    pub at_ms: i64,
}

/// What one provider's balance is held against, and the last reading of it.
#[derive(Debug)]
pub struct CreditWatch {
    /// Submission pauses while a reading is below this; 0 means no floor.
    floor: u64,
    /// How often the balance is read.
    every: Duration,
    last: Mutex<Option<CreditReading>>,
}

impl CreditWatch {
    pub fn new(floor: u64, every: Duration) -> Self {
        Self {
            floor,
            every: every.max(Duration::from_millis(100)),
            last: Mutex::new(None),
        }
    }

    /// The floor, when one is set.
    pub fn floor(&self) -> Option<u64> {
        (self.floor > 0).then_some(self.floor)
    }

    /// How often the balance is read.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The last reading, if the balance was ever read by this instance.
    pub fn last(&self) -> Option<CreditReading> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, reading: CreditReading) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reading);
    }

    /// Whether `balance` is below the floor.
    pub fn below_floor(&self, balance: i64) -> bool {
        self.floor()
            .is_some_and(|floor| balance < i64::try_from(floor).unwrap_or(i64::MAX))
    }

    /// How long a floor pause lasts unless renewed.
    fn pause_length(&self) -> Duration {
        (self.every * FLOOR_PAUSE_READINGS).max(MIN_FLOOR_PAUSE)
    }
}

/// Why a floor pause holds, in a sentence that reads alone (`/readyz`, the log, the page).
pub fn floor_sentence(provider: &str, balance: i64, floor: u64) -> String {
    let label = provider_label(provider);
    format!(
        "{label}'s credit balance is {balance}, below the floor of {floor} set for darkroom: \
         submission is paused until a reading shows the balance back at the floor or above \
         (top up the {label} account)"
    )
}

impl Engine {
    /// `provider`'s balance as last read and the floor held against it.
    pub fn provider_credits(&self, provider: &str) -> Option<&CreditWatch> {
        self.providers.get(provider).map(|p| &p.gate().credits)
    }

    /// Reads one provider's balance and acts on it; the balance, or `None` when the
    /// provider reports none or the reading failed (logged).
    pub(super) async fn read_credits_of(&self, registered: &Registered) -> Option<i64> {
        let answer = registered.provider().credits().await?;
        self.credit_answer(registered, answer).await
    }

    /// Acts on one answer to a balance reading.
    async fn credit_answer(
        &self,
        registered: &Registered,
        answer: Result<i64, ProviderError>,
    ) -> Option<i64> {
        let name = registered.name();
        let balance = match answer {
            Ok(balance) => balance,
            Err(e) => {
                let message = format!("reading {name}'s credit balance failed: {e}");
                if let Some(repeated) = crate::log_throttle::errors().admit(&message) {
                    tracing::warn!(provider = name, error = %e, repeated, "reading the credit balance failed; the last reading stands");
                }
                return None;
            }
        };
        let gate = registered.gate();
        let watch = &gate.credits;
        watch.record(CreditReading {
            balance,
            at_ms: now_ms(),
        });
        #[allow(clippy::cast_precision_loss)]
        self.metrics
            .provider_gauge(names::PROVIDER_CREDITS, name, balance as f64);
        tracing::debug!(
            provider = name,
            balance,
            floor = watch.floor(),
            "credit balance read"
        );
        match watch.floor() {
            Some(floor) if watch.below_floor(balance) => {
                self.hold_at_floor(registered, balance, floor).await;
            }
            Some(floor) => self.lift_floor_pause(registered, balance, floor).await,
            None => {}
        }
        Some(balance)
    }

    /// Starts or renews the floor pause, here and in the database.
    async fn hold_at_floor(&self, registered: &Registered, balance: i64, floor: u64) {
        let name = registered.name();
        let gate = registered.gate();
        let reason = floor_sentence(name, balance, floor);
        let Some((shared, started)) =
            gate.hold_pause(gate.credits.pause_length(), FLOOR_CODE, &reason)
        else {
            return;
        };
        if started {
            tracing::warn!(
                provider = name,
                balance,
                floor,
                code = FLOOR_CODE,
                reason = %reason,
                "credit balance below the floor: submission paused"
            );
            self.metrics.provider_paused(name, FLOOR_CODE);
        }
        if let Err(e) = self.repo.pause_provider(name, &shared).await {
            tracing::warn!(provider = name, error = %e, "the credit floor pause could not be written to the database: it holds on this instance only");
        }
    }

    /// Lifts the floor pause, in the database first (so no claim re-reads it there), then
    /// here.
    async fn lift_floor_pause(&self, registered: &Registered, balance: i64, floor: u64) {
        let name = registered.name();
        let shared = match self.repo.lift_provider_pause(name, FLOOR_CODE).await {
            Ok(lifted) => lifted,
            Err(e) => {
                tracing::warn!(provider = name, error = %e, "the credit floor pause could not be lifted in the database; it ends there when it runs out");
                false
            }
        };
        if registered.gate().lift_pause(FLOOR_CODE) || shared {
            tracing::info!(
                provider = name,
                balance,
                floor,
                "credit balance back at or above the floor: submission resumes"
            );
        }
    }

    /// Reads the balance of each provider that reports one, every reading interval (the
    /// first at once), until `shutdown`.
    pub async fn watch_credits(self: Arc<Self>, shutdown: CancellationToken) {
        let mut watchers = tokio::task::JoinSet::new();
        for name in self.providers.names() {
            watchers.spawn(self.clone().watch_credits_of(name, shutdown.clone()));
        }
        while watchers.join_next().await.is_some() {}
    }

    async fn watch_credits_of(self: Arc<Self>, name: &'static str, shutdown: CancellationToken) {
        let Some(registered) = self.providers.get(name) else {
            return;
        };
        let every = registered.gate().credits.every();
        let mut reported = false;
        loop {
            let answer = tokio::select! {
                answer = registered.provider().credits() => answer,
                () = shutdown.cancelled() => return,
            };
            let Some(answer) = answer else {
                // This provider has no balance to read.
                return;
            };
            if !reported {
                reported = true;
                tracing::info!(
                    provider = name,
                    every_secs = every.as_secs(),
                    floor = registered.gate().credits.floor(),
                    "reading the credit balance periodically"
                );
            }
            self.credit_answer(registered, answer).await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
