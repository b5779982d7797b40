//! The circuit of one provider: open while the provider cannot be reached at all (the
//! connection refused, its host name not resolving, connecting timing out), closed as soon
//! as anything it says proves it is back.
//!
//! While it is open nothing is sent to that provider but one probe at a time, spaced by a
//! capped exponential backoff: a real create taken from the queue, or a status query of a
//! task waiting at the provider, whichever comes first. Any answer to a probe (success or
//! an error the provider itself sent) closes the circuit; another refusal opens the next,
//! longer wait. Tasks refused on the way never spend an attempt, since nothing was sent.
//!
//! Like the pauses of `limits.rs`, the state is this instance's: a restarted process starts
//! closed and learns again from its first refusal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::job::{Outcome, Reason};
use super::{Engine, now_ms};
use crate::clock::iso_time;
use crate::domain::JobCode;
use crate::storage::Task;

/// How long the circuit waits before each probe: `first`, doubling, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeBackoff {
    pub first: Duration,
    pub max: Duration,
}

impl ProbeBackoff {
    /// The wait after `failed_probes` probes failed in a row.
    fn wait(&self, failed_probes: u32) -> Duration {
        let factor = 1u32 << failed_probes.min(20);
        self.first
            .saturating_mul(factor)
            .min(self.max.max(self.first))
    }
}

impl Default for ProbeBackoff {
    fn default() -> Self {
        Self {
            first: Duration::from_secs(5),
            max: Duration::from_secs(60),
        }
    }
}

/// What is known about an open circuit, as `/readyz` and the tasks that wait report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    /// When the first refusal was seen, Unix milliseconds.
    pub since_ms: i64,
    /// The last refusal, in the transport's words (`tcp connect error: Connection refused`).
    pub reason: String,
    /// Probes that found the provider still out of reach.
    pub failed_probes: u32,
    /// When the next probe may go.
    pub next_probe: Instant,
}

impl Outage {
    /// `next_probe` as Unix milliseconds.
    pub fn next_probe_ms(&self) -> i64 {
        let left = self.next_probe.saturating_duration_since(Instant::now());
        now_ms().saturating_add(i64::try_from(left.as_millis()).unwrap_or(i64::MAX))
    }
}

/// Whether a caller may talk to the provider now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The circuit is closed: as usual.
    Closed,
    /// The circuit is open and this caller carries the probe. Report its outcome with
    /// [`Circuit::reached`] or [`Circuit::unreachable`]; a probe that ends without either
    /// (nothing to send after all) goes back with [`Circuit::return_probe`].
    Probe,
    /// The circuit is open; wait for the next probe.
    Wait(Outage),
}

#[derive(Debug)]
struct Open {
    outage: Outage,
    /// A probe has been handed out and has not reported yet.
    probing: bool,
}

#[derive(Debug)]
pub struct Circuit {
    provider: &'static str,
    backoff: ProbeBackoff,
    open: Mutex<Option<Open>>,
}

impl Circuit {
    pub fn new(provider: &'static str, backoff: ProbeBackoff) -> Self {
        Self {
            provider,
            backoff,
            open: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Open>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The outage while the circuit is open.
    pub fn outage(&self) -> Option<Outage> {
        self.lock().as_ref().map(|open| open.outage.clone())
    }

    /// Asks to talk to the provider now. At most one probe is out at a time; one that never
    /// reports (its job died) is replaced at the next probe time.
    pub fn admit(&self) -> Admission {
        let mut open = self.lock();
        let Some(open) = open.as_mut() else {
            return Admission::Closed;
        };
        let now = Instant::now();
        if open.outage.next_probe > now {
            return Admission::Wait(open.outage.clone());
        }
        open.probing = true;
        open.outage.next_probe = now + self.backoff.wait(open.outage.failed_probes + 1);
        Admission::Probe
    }

    /// A probe that was not used (no task to send after all): the next caller may probe.
    pub fn return_probe(&self) {
        if let Some(open) = self.lock().as_mut()
            && open.probing
        {
            open.probing = false;
            open.outage.next_probe = Instant::now();
        }
    }

    /// The provider could not be reached. Opens the circuit (one warning), or, when a probe
    /// was out, counts it as failed and waits longer. Returns the outage as it now stands.
    pub fn unreachable(&self, reason: &str) -> Outage {
        let mut open = self.lock();
        let now = Instant::now();
        match open.as_mut() {
            None => {
                let outage = Outage {
                    since_ms: now_ms(),
                    reason: reason.to_owned(),
                    failed_probes: 0,
                    next_probe: now + self.backoff.wait(0),
                };
                tracing::warn!(
                    provider = self.provider,
                    reason,
                    first_probe_in_ms = self.backoff.wait(0).as_millis() as u64,
                    "provider unreachable; submissions pause until a probe gets an answer"
                );
                *open = Some(Open {
                    outage: outage.clone(),
                    probing: false,
                });
                outage
            }
            Some(state) => {
                if state.probing {
                    state.probing = false;
                    state.outage.failed_probes += 1;
                    let wait = self.backoff.wait(state.outage.failed_probes);
                    state.outage.next_probe = now + wait;
                    tracing::debug!(
                        provider = self.provider,
                        reason,
                        failed_probes = state.outage.failed_probes,
                        next_probe_in_ms = wait.as_millis() as u64,
                        "provider still unreachable"
                    );
                }
                state.outage.reason = reason.to_owned();
                state.outage.clone()
            }
        }
    }

    /// The provider answered something (even an error of its own): it is reachable. Closes
    /// an open circuit (one info line).
    pub fn reached(&self) {
        let mut open = self.lock();
        if let Some(closed) = open.take() {
            let down_ms = now_ms().saturating_sub(closed.outage.since_ms);
            tracing::info!(
                provider = self.provider,
                down_ms,
                failed_probes = closed.outage.failed_probes,
                "provider reachable again; submissions resume"
            );
        }
    }
}

/// How a provider's name reads in a sentence.
pub fn provider_label(provider: &str) -> String {
    match provider {
        "kie" => "KIE".to_owned(),
        "gemini" => "Gemini".to_owned(),
        other => other.to_owned(),
    }
}

/// Why a task waits while its provider cannot be reached, in a sentence.
pub fn unreachable_sentence(provider: &str, outage: &Outage) -> String {
    let label = provider_label(provider);
    format!(
        "{label} cannot be reached since {} ({}); nothing was sent, so no attempt is spent. \
         The task waits and goes out when {label} answers again (next check around {}).",
        iso_time(outage.since_ms),
        outage.reason,
        iso_time(outage.next_probe_ms()),
    )
}

impl Engine {
    /// Since when and why `provider` cannot be reached, if it cannot.
    pub fn provider_outage(&self, provider: &str) -> Option<Outage> {
        self.providers
            .get(provider)
            .and_then(|p| p.gate().circuit.outage())
    }

    /// The circuit of `provider` (none for a provider this instance does not have).
    pub(super) fn circuit(&self, provider: &str) -> Option<&Circuit> {
        self.providers.get(provider).map(|p| &p.gate().circuit)
    }

    /// `provider` answered: close its circuit if it was open.
    pub(super) fn provider_reached(&self, provider: &str) {
        if let Some(circuit) = self.circuit(provider) {
            let was_open = circuit.outage().is_some();
            circuit.reached();
            if was_open {
                // Tasks waiting for the provider are due already: go and claim them.
                self.dispatch_wake.notify_one();
            }
        }
    }

    /// A create that never left: the provider's circuit opens (or stays open) and the task
    /// goes back to the queue as it was, without spending an attempt. It is due at once, so
    /// it goes out as soon as the circuit closes, in its turn.
    pub(super) fn submit_unreachable(&self, task: &Task, reason: &str) -> Outcome {
        let message = match self.circuit(&task.provider) {
            Some(circuit) => unreachable_sentence(&task.provider, &circuit.unreachable(reason)),
            None => format!(
                "{} cannot be reached ({reason}); nothing was sent, so no attempt is spent",
                provider_label(&task.provider)
            ),
        };
        tracing::debug!(task_id = %task.id, reason, "create not sent: provider unreachable");
        Outcome::RetryIn {
            delay: Duration::ZERO,
            reason: Reason::free(JobCode::ProviderUnreachable, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(first_ms: u64, max_ms: u64) -> Circuit {
        Circuit::new(
            "test",
            ProbeBackoff {
                first: Duration::from_millis(first_ms),
                max: Duration::from_millis(max_ms),
            },
        )
    }

    #[test]
    fn the_wait_doubles_up_to_its_cap() {
        let backoff = ProbeBackoff {
            first: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        let waits: Vec<u128> = (0..6).map(|n| backoff.wait(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.wait(u32::MAX).as_millis(), 1000);
    }

    #[test]
    fn closed_until_a_refusal_then_one_probe_at_a_time() {
        let circuit = circuit(20, 1000);
        assert_eq!(circuit.admit(), Admission::Closed);
        let outage = circuit.unreachable("connection refused");
        assert_eq!(outage.failed_probes, 0);
        assert!(matches!(circuit.admit(), Admission::Wait(_)));
        // Refusals of calls already under way change nothing while no probe is out.
        assert_eq!(circuit.unreachable("again").failed_probes, 0);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(circuit.admit(), Admission::Probe);
        assert!(
            matches!(circuit.admit(), Admission::Wait(_)),
            "a second probe while the first is out"
        );
        // The probe fails: the wait doubles.
        let outage = circuit.unreachable("connection refused");
        assert_eq!(outage.failed_probes, 1);
        let left = outage.next_probe.saturating_duration_since(Instant::now());
        assert!(left > Duration::from_millis(20), "{left:?}");
        std::thread::sleep(left + Duration::from_millis(5));
        assert_eq!(circuit.admit(), Admission::Probe);
        circuit.reached();
        assert_eq!(circuit.admit(), Admission::Closed);
        assert!(circuit.outage().is_none());
    }

    #[test]
    fn an_unused_probe_goes_back() {
        let circuit = circuit(10, 1000);
        circuit.unreachable("dns error");
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(circuit.admit(), Admission::Probe);
        circuit.return_probe();
        assert_eq!(circuit.admit(), Admission::Probe);
        assert_eq!(circuit.outage().unwrap().failed_probes, 0);
    }

    #[test]
    fn the_outage_keeps_its_start() {
        let circuit = circuit(1, 5);
        let first = circuit.unreachable("a");
        std::thread::sleep(Duration::from_millis(5));
        let _ = circuit.admit();
        let later = circuit.unreachable("b");
        assert_eq!(later.since_ms, first.since_ms);
        assert_eq!(later.reason, "b");
    }
}
