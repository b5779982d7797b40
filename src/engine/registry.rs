//! The providers the engine dispatches to, found by the name each task stores, each with its
//! own bound on concurrent calls and its own limits (rate windows, in-flight cap, pause): a
//! minute-long Gemini generation holds a Gemini slot, and a Gemini 429 pauses Gemini, never
//! anything KIE tasks wait for.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::limits::ProviderGate;
use crate::providers::Provider;

/// A semaphore with the size it was made with (for draining it at shutdown).
#[derive(Clone, Debug)]
pub(super) struct Pool {
    slots: Arc<Semaphore>,
    size: usize,
    /// Set when [`Pool::take_free`] found every permit taken: its lane waits for one back.
    wanted: Arc<AtomicBool>,
}

impl Pool {
    pub(super) fn new(size: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(size)),
            size,
            wanted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Every permit free right now (possibly none).
    pub(super) fn take_free(&self) -> Vec<OwnedSemaphorePermit> {
        let free: Vec<_> =
            std::iter::from_fn(|| self.slots.clone().try_acquire_owned().ok()).collect();
        if free.is_empty() {
            self.wanted.store(true, Ordering::Release);
        }
        free
    }

    /// One permit if one is free right now, for work taken on outside the pool's own lane.
    pub(super) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Whether the pool's lane found no permit free since the last call: a permit taken
    /// with [`Pool::try_take`] and given back should wake it.
    pub(super) fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::AcqRel)
    }

    /// Waits until every permit is back: all jobs holding one have finished.
    pub(super) async fn drain(&self) {
        let n = u32::try_from(self.size).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(n).await;
    }
}

/// One provider, its call slots and its limits.
pub struct Registered {
    provider: Arc<dyn Provider>,
    /// The model its tasks use by default (a task moved to it takes this one).
    model: String,
    pool: Pool,
    gate: ProviderGate,
}

impl Registered {
    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    pub fn name(&self) -> &'static str {
        self.provider.name()
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn gate(&self) -> &ProviderGate {
        &self.gate
    }
}

/// Every provider this instance can dispatch to.
#[derive(Default)]
pub struct ProviderRegistry {
    // A handful of providers at most: a list beats a map.
    entries: Vec<Registered>,
}

impl ProviderRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `provider`, whose tasks use `model` by default, with at most `concurrency` calls
    /// at once, within `gate`'s limits. A second provider of the same name replaces the first.
    pub fn register(
        &mut self,
        provider: Arc<dyn Provider>,
        model: String,
        concurrency: usize,
        gate: ProviderGate,
    ) {
        self.entries.retain(|e| e.name() != provider.name());
        self.entries.push(Registered {
            provider,
            model,
            pool: Pool::new(concurrency.max(1)),
            gate,
        });
    }

    pub fn get(&self, name: &str) -> Option<&Registered> {
        self.entries.iter().find(|e| e.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Registered> {
        self.entries.iter()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.entries.iter().map(Registered::name).collect()
    }
}
