//! The worker machinery with a provider made for the purpose: a job that panics stays inside
//! its own task (the engine, the other jobs and the step go on), and its task is taken up
//! again when its lease runs out, settled through the one job model.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use darkroom::domain::image::ImageLimits;
use darkroom::domain::{TaskId, TaskState};
use darkroom::engine::circuit::ProbeBackoff;
use darkroom::engine::limits::ProviderGate;
use darkroom::engine::{Engine, EngineSettings, InputRoute, ProviderRegistry};
use darkroom::events::EventBus;
use darkroom::net::Fetcher;
use darkroom::providers::{
    Delivery, Generated, Limits, Provider, ProviderError, RemoteStatus, Submission, SubmitRequest,
};
use darkroom::status::StatusBoard;
use darkroom::storage::sqlite::SqliteRepo;
use darkroom::storage::{BlobStore, NewTask, TaskRepo};
use url::Url;

use crate::harness::png;

/// Generates inline, except that its first `panics` calls panic.
struct Panicky {
    panics: usize,
    calls: AtomicUsize,
}

#[async_trait]
impl Provider for Panicky {
    fn name(&self) -> &'static str {
        "panicky"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Inline
    }

    fn takes_inline_inputs(&self) -> bool {
        true
    }

    async fn submit(&self, request: &SubmitRequest) -> Result<Submission, ProviderError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            call >= self.panics,
            "a provider bug on call {call} for {}",
            request.task_id
        );
        Ok(Submission::Completed(Generated {
            provider_task_id: None,
            images: vec![Bytes::from(png(8, 8))],
            credits: None,
            cost_time_ms: None,
        }))
    }

    async fn query(&self, _: &str) -> Result<RemoteStatus, ProviderError> {
        unreachable!("an inline provider is never asked")
    }
}

/// A queued task for the panicking provider (the contract suites' task, renamed).
fn task(n: i64) -> NewTask {
    NewTask {
        provider: "panicky".into(),
        ..darkroom::storage::contract::new_task(None, 0, darkroom::clock::now_ms() + n)
    }
}

#[tokio::test]
async fn a_panicking_job_stays_inside_it_and_its_task_is_taken_up_again() {
    const LEASE: Duration = Duration::from_secs(1);
    let repo = Arc::new(SqliteRepo::in_memory().await.unwrap());
    let server = Url::parse("http://127.0.0.1:9/").unwrap();
    let provider = Arc::new(Panicky {
        panics: 1,
        calls: AtomicUsize::new(0),
    });
    let mut registry = ProviderRegistry::new();
    let probes = ProbeBackoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    // One call slot: the panicking call must give its slot back, or nothing else runs.
    registry.register(
        provider.clone(),
        "panicky-model".into(),
        1,
        ProviderGate::for_limits("panicky", Limits::NONE, probes),
    );
    let settings = EngineSettings {
        worker_id: "w".into(),
        lease: LEASE,
        dispatch_concurrency: 2,
        ingest_concurrency: 2,
        max_attempts: 3,
        task_deadline: Duration::from_secs(600),
        tick: Duration::from_millis(50),
        max_result_bytes: 1 << 20,
        image_limits: ImageLimits {
            max_dimension: 4096,
            max_pixels: 16 << 20,
        },
        callback_base: server.join("api/callback").unwrap(),
        verify_callbacks: false,
        first_poll: Duration::from_secs(3),
        input_route: InputRoute::Proxy,
        unconfirmed_window: Duration::from_secs(600),
        resubmit_unconfirmed: false,
        check_client_inputs: false,
        credits_pause: Duration::from_secs(60),
        budget: darkroom::engine::BudgetSettings::default(),
        missing_task_answers: 3,
        shutdown_grace: Duration::from_secs(5),
        failover: darkroom::engine::failover::FailoverPolicy::default(),
    };
    let engine = Arc::new(Engine::new(
        repo.clone(),
        BlobStore::memory(server),
        registry,
        Fetcher::new([], Duration::from_secs(1), Duration::from_secs(1)).unwrap(),
        Arc::new(StatusBoard::new(100)),
        Arc::new(EventBus::new()),
        settings,
    ));
    let tasks = [task(0), task(1)];
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    repo.insert(&tasks).await.unwrap();

    // The first job panics; the step returns normally and the second task goes through
    // the same (single) call slot.
    let ran = engine
        .run_pending()
        .await
        .expect("a panic stays inside its job");
    let first = repo.get(&ids[0]).await.unwrap().unwrap();
    let second = repo.get(&ids[1]).await.unwrap().unwrap();
    assert_eq!(first.state, TaskState::Submitting, "{first:?}");
    assert_eq!(second.state, TaskState::Succeeded, "{second:?}");

    // When the lease runs out the task is taken up again and completes.
    let started = Instant::now();
    let first = loop {
        engine.run_pending().await.unwrap();
        let first = repo.get(&ids[0]).await.unwrap().unwrap();
        if first.state.is_terminal() {
            break first;
        }
        assert!(
            started.elapsed() < LEASE * 10,
            "not taken up again after {:?}: {first:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "a panicking job: {ran} jobs in the first step (1 panicked, the other succeeded through the same slot); taken up again {:?} later and {}, after {} provider calls",
        started.elapsed(),
        first.state.as_str(),
        provider.calls.load(Ordering::SeqCst)
    );
    assert_eq!(first.state, TaskState::Succeeded, "{first:?}");
    assert_eq!(provider.calls.load(Ordering::SeqCst), 3);
}
