//! darkroom: an asynchronous image-generation gateway. Clients upload reference images and
//! ask for generations; darkroom queues tasks, submits each to its provider (KIE, answering
//! later by callback; Gemini, answering inline), copies results into the operator's bucket
//! and reports progress.

pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod engine;
pub mod events;
pub mod http;
pub mod log_throttle;
pub mod migrate_db;
pub mod net;
pub mod progress;
pub mod providers;
pub mod reindex;
pub mod retention;
pub mod spool;
pub mod status;
pub mod storage;
pub mod telemetry;
pub mod views;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use config::{Config, InputMode};
use engine::circuit::ProbeBackoff;
use engine::limits::ProviderGate;
use engine::{BudgetSettings, Engine, EngineSettings, InputRoute, ProviderRegistry};
use events::EventBus;
use providers::sim::{GeminiSim, KieSim};
use status::StatusBoard;
use storage::postgres::PgRepo;
use storage::sqlite::SqliteRepo;
use storage::{AccessRepo, BlobStore, Repo};

/// The server secret that signs `/files` URLs when API keys are on.
const FILE_URL_SECRET: &str = "file_url_signing";

/// How many ready status answers are kept in memory.
const STATUS_BOARD_CAPACITY: usize = 100_000;

/// What this instance runs with, for `/api/info` and the page.
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    /// The default provider (what a request without `provider` gets).
    pub provider: &'static str,
    /// Whether the default provider is a built-in simulator.
    pub simulator: bool,
    pub storage: &'static str,
    pub providers: Vec<ProviderInfo>,
}

/// One provider this instance dispatches to.
#[derive(Clone, Debug)]
pub struct ProviderInfo {
    pub name: &'static str,
    pub model: String,
    pub simulator: bool,
}

/// Cheap handles shared by every request handler.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub repo: Arc<dyn Repo>,
    pub blobs: BlobStore,
    pub engine: Arc<Engine>,
    pub board: Arc<StatusBoard>,
    pub info: Arc<ServiceInfo>,
    /// API keys, uploads' owners, server secrets.
    pub access: Arc<dyn AccessRepo>,
    /// Key lookup, per-key limits and the callback rate limit.
    pub auth: Arc<http::auth::Auth>,
    /// What `/readyz` checks (write probes, free space).
    pub readiness: Arc<http::readiness::ReadinessChecks>,
    /// This instance's metrics (`GET /metrics`); shared with the engine.
    pub metrics: Arc<telemetry::Metrics>,
    /// Cancelled when the server shuts down: open streams (SSE, WebSocket, long-polls)
    /// end, so graceful shutdown is not held up by them.
    pub streams_closing: CancellationToken,
}

/// A built darkroom: state, engine and (in the embedded default) its simulator.
pub struct App {
    pub state: AppState,
    pub public_url: Url,
    /// The in-process KIE simulator, when no `KIE_API_TOKEN` is configured.
    pub simulator: Option<Arc<KieSim>>,
    /// The in-process Gemini simulator, when no `GEMINI_API_KEY` is configured.
    pub gemini_simulator: Option<Arc<GeminiSim>>,
    /// Stops the in-process simulator when the app stops.
    sim_shutdown: CancellationToken,
    /// The SQLite repository behind `state.repo`, for tools and tests (its size cap);
    /// `None` on PostgreSQL.
    pub sqlite: Option<Arc<SqliteRepo>>,
    /// The PostgreSQL repository behind `state.repo`, when `DARKROOM_DATABASE_URL` names one.
    pub postgres: Option<Arc<PgRepo>>,
}

/// The URL clients and the provider use to reach this server.
fn public_url(config: &Config, bound: SocketAddr) -> anyhow::Result<Url> {
    if let Some(url) = &config.server.public_url {
        return Ok(url.clone());
    }
    let host = if bound.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), bound.port())
    } else {
        bound
    };
    Url::parse(&format!("http://{host}")).context("building the public URL")
}

impl App {
    /// Opens the database and bucket, builds the providers ([`providers::build()`], which
    /// starts the simulator of each provider without credentials) and wires the engine.
    /// `bound` is the address the HTTP listener is bound to.
    pub async fn build(config: Config, bound: SocketAddr) -> anyhow::Result<Self> {
        let public_url = public_url(&config, bound)?;
        if config.database.url.is_none() {
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data directory {}",
                    config.data_dir.display()
                )
            })?;
        }
        let database_url = config.database_url();
        let shown_url = storage::redact_url(&database_url);
        let opened = storage::open(
            &database_url,
            config.database.max_connections,
            match config.database.synchronous {
                config::Synchronous::Normal => storage::Durability::Normal,
                config::Synchronous::Full => storage::Durability::Full,
            },
        )
        .await
        .with_context(|| format!("cannot open the database {shown_url}"))?;
        let storage::Opened {
            backend,
            repo,
            access,
            sqlite,
            postgres,
        } = opened;
        tracing::info!(database = %shown_url, backend = backend.name(), "database ready (migrations applied)");
        let auth = Arc::new(http::auth::Auth::new(&config, access.clone()).await?);

        let mut blobs = BlobStore::from_config(&config, public_url.clone())?;
        if auth.required() {
            // Shared by every instance on this database, so a URL signed by one opens on all.
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            let secret = access
                .server_secret(FILE_URL_SECRET, &fresh, clock::now_ms())
                .await?;
            blobs.sign_file_urls(secret.as_bytes());
            tracing::info!(
                public_bucket = blobs.has_public_base(),
                "API keys required on client routes; /files URLs are signed"
            );
        } else {
            tracing::warn!(
                "no API keys configured: every client route is open (set DARKROOM_API_KEYS or run `darkroom keys create NAME`)"
            );
        }
        blobs.probe().await.with_context(|| {
            format!(
                "the bucket ({}) is not reachable or not writable",
                blobs.describe()
            )
        })?;
        tracing::info!(bucket = blobs.describe(), "bucket ready");

        let sim_shutdown = CancellationToken::new();
        let providers::BuiltProviders {
            providers: built,
            fetcher,
            kie_simulator: simulator,
            gemini_simulator,
        } = providers::build(&config, &blobs, sim_shutdown.clone()).await?;
        let probes = ProbeBackoff {
            first: config.engine.unreachable_first_probe_ms,
            max: config.engine.unreachable_max_probe_ms,
        };
        let mut registry = ProviderRegistry::new();
        let mut provider_info = Vec::with_capacity(built.len());
        for entry in built {
            let name = entry.provider.name();
            provider_info.push(ProviderInfo {
                name,
                model: entry.model.clone(),
                simulator: entry.simulator,
            });
            let gate = ProviderGate::for_limits(name, entry.limits, probes);
            registry.register(entry.provider, entry.model, entry.concurrency, gate);
        }

        let callback_base = match &config.kie.callback_url {
            Some(url) => url.clone(),
            None => public_url.join("api/callback")?,
        };
        if simulator.is_none() && config.kie.callback_url.is_none() {
            tracing::warn!(callback_base = %callback_base, "KIE_CALLBACK_URL is not set; KIE must be able to reach this address, or tasks complete only through polling");
        }
        let input_route = input_route(&config, &blobs);
        tracing::info!(
            route = input_route.mode(),
            "input images reach the provider through {input_route}"
        );
        let board = Arc::new(StatusBoard::new(STATUS_BOARD_CAPACITY));
        let settings = EngineSettings {
            worker_id: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            lease: config.engine.lease_secs,
            dispatch_concurrency: config.engine.dispatch_concurrency,
            ingest_concurrency: config.engine.ingest_concurrency,
            max_attempts: config.engine.max_attempts,
            task_deadline: config.engine.task_deadline_secs,
            tick: config.engine.tick_ms,
            max_result_bytes: config.limits.max_result_bytes,
            image_limits: config.image_limits(),
            callback_base,
            verify_callbacks: config.kie.verify_callbacks,
            first_poll: config.engine.first_poll_ms,
            input_route,
            unconfirmed_window: config.engine.unconfirmed_window_secs,
            resubmit_unconfirmed: config.engine.resubmit_unconfirmed,
            check_client_inputs: config.engine.check_client_inputs,
            credits_pause: config.kie.credits_pause_secs,
            missing_task_answers: config.engine.missing_task_answers,
            shutdown_grace: config.engine.shutdown_grace_secs,
            budget: budget_settings(&config.budget),
            failover: engine::failover::FailoverPolicy {
                chain: config
                    .engine
                    .failover
                    .0
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
                by_default: config.engine.failover_by_default,
                after_failures: config.engine.failover_after_failures,
                pause: config.engine.failover_pause_secs,
            },
        };
        let events = Arc::new(EventBus::new());
        let metrics = Arc::new(telemetry::Metrics::new());
        if !config.metrics.enabled {
            metrics.stop_recording_requests();
        }
        metrics.backends(
            backend.name(),
            if config.storage.s3.is_some() {
                "s3"
            } else {
                "local"
            },
        );
        // Results are fetched only from DARKROOM_RESULT_HOSTS when it is set; the Gemini
        // provider's fetches of client input URLs are not results and keep the plain rules.
        let result_fetcher = fetcher.clone().with_allowed_hosts(
            config
                .fetch
                .result_hosts
                .iter()
                .map(|h| h.as_str().to_owned()),
        );
        let signer = webhooks::Signer::load(
            config.webhook.secret.as_ref().map(config::Secret::expose),
            &config.data_dir,
        )?;
        let webhooks = Arc::new(webhooks::Deliverer::new(
            repo.clone(),
            access.clone(),
            fetcher.clone(),
            signer,
            config.webhook.first_retry_ms,
        ));
        let engine = Arc::new(
            Engine::new(
                repo.clone(),
                blobs.clone(),
                registry,
                result_fetcher,
                board.clone(),
                events.clone(),
                settings,
            )
            .with_webhooks(webhooks)
            .with_metrics(metrics.clone()),
        );
        let default = provider_info
            .iter()
            .find(|p| p.name == config.default_provider.as_str())
            .unwrap_or(&provider_info[0]);
        tracing::info!(
            default_provider = default.name,
            "requests and sources that name no provider use the default provider"
        );
        let info = ServiceInfo {
            provider: default.name,
            simulator: default.simulator,
            storage: if config.storage.s3.is_some() {
                "s3"
            } else {
                "local"
            },
            providers: provider_info.clone(),
        };
        let readiness = Arc::new(http::readiness::ReadinessChecks::new(
            &config,
            repo.clone() as Arc<dyn storage::TaskRepo>,
            blobs.clone(),
        ));
        Ok(Self {
            state: AppState {
                config: Arc::new(config),
                repo,
                blobs,
                engine,
                board,
                info: Arc::new(info),
                access,
                auth,
                readiness,
                metrics,
                streams_closing: CancellationToken::new(),
            },
            public_url,
            simulator,
            gemini_simulator,
            sim_shutdown,
            sqlite,
            postgres,
        })
    }

    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Serves HTTP on `listener` and runs the engine until `shutdown` is cancelled; then
    /// stops accepting, lets in-flight work finish (bounded) and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        // Changes other instances make (PostgreSQL), followed with or without workers.
        tokio::spawn(self.state.engine.clone().follow_changes(shutdown.clone()));
        let roles = self.state.config.roles;
        let workers = self.state.config.runs_workers();
        if workers {
            self.state.engine.recheck_budget_waiters().await;
        }
        let engine = workers.then(|| {
            let engine = self.state.engine.clone();
            tokio::spawn(engine.run(shutdown.clone()))
        });
        // Instances with workers read the providers' credit balances (and hold the floor).
        let credits = workers.then(|| {
            let engine = self.state.engine.clone();
            tokio::spawn(engine.watch_credits(shutdown.clone()))
        });
        let sweeps = self
            .state
            .config
            .retention
            .days
            .filter(|_| workers)
            .map(|days| {
                retention::spawn_sweeps(
                    self.state.repo.clone(),
                    self.state.blobs.clone(),
                    self.state.board.clone(),
                    days,
                    self.state.config.retention.interval_secs,
                    shutdown.clone(),
                )
            });
        self.state.metrics.spawn_upkeep(METRICS_UPKEEP);
        if let Some(addr) = self
            .state
            .config
            .metrics
            .listen
            .filter(|_| self.state.config.metrics.enabled)
        {
            let listener = TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for /metrics (DARKROOM_METRICS_LISTEN)")
            })?;
            tracing::info!(address = %addr, "serving /metrics on its own listener");
            let router = http::metrics_router(self.state.clone());
            let header_timeout = self.state.config.server.header_timeout_secs;
            tokio::spawn(serve_http(
                listener,
                router,
                header_timeout,
                shutdown.clone(),
            ));
        }
        // A workers-only instance answers health, readiness and metrics, and says where the
        // API is for anything else.
        let header_timeout = self.state.config.server.header_timeout_secs;
        let streams_closing = self.state.streams_closing.clone();
        let stop_streams = shutdown.clone();
        tokio::spawn(async move {
            stop_streams.cancelled().await;
            streams_closing.cancel();
        });
        tracing::info!(url = %self.public_url, api = roles.api, workers, "darkroom is listening");
        if roles.api {
            // Status polls the board can answer are answered before the router.
            let service = http::with_status_polls(self.router(), self.state.clone());
            serve_http(listener, service, header_timeout, shutdown.clone()).await;
        } else {
            let router = http::workers_router(self.state.clone());
            serve_http(listener, router, header_timeout, shutdown.clone()).await;
        }
        if let Some(engine) = engine {
            let _ = engine.await;
        }
        if let Some(sweeps) = sweeps {
            let _ = sweeps.await;
        }
        if let Some(credits) = credits {
            let _ = credits.await;
        }
        // Changes made by the API (callbacks, cancels) have records to write too.
        let grace = self.state.config.engine.shutdown_grace_secs;
        self.state.engine.flush_records(grace).await;
        self.sim_shutdown.cancel();
        Ok(())
    }
}

/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// How long open connections get to finish their requests after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/1.1 server. Unlike `axum::serve` it bounds the time a client may take to send
/// a request's headers, on a fresh connection and on an idle keep-alive one alike, so
/// slow or silent clients cannot hold connections open (request bodies have their own
/// deadline, [`http::limits`]). On `shutdown` it stops accepting and drains open
/// connections, bounded by [`DRAIN_TIMEOUT`].
async fn serve_http<S>(
    listener: TcpListener,
    service: S,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    // hyper's HTTP/1 connection directly (not hyper-util's auto builder, which waits for
    // the first bytes to pick a protocol with no timeout at all): the header timer runs
    // from the moment a connection is ready for a request.
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(service.clone());
        // Upgrades stay possible (WebSocket).
        let connection = http1
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                // Timeouts and resets by clients are routine; not worth more than debug.
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown: some connections were still open after the drain timeout");
    }
}

/// The budgets and the price table, as the engine applies them.
pub fn budget_settings(budget: &config::BudgetConfig) -> BudgetSettings {
    use domain::request::ProviderName::{Gemini, Kie};
    let credits = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    BudgetSettings {
        global_daily_credits: credits(budget.daily_credits),
        fail_when_spent: budget.policy == config::BudgetPolicy::Fail,
        prices: domain::budget::PriceTable(vec![
            (
                Kie.as_str().to_owned(),
                credits(budget.kie_credits_per_task),
            ),
            (
                Gemini.as_str().to_owned(),
                credits(budget.gemini_credits_per_task),
            ),
        ]),
    }
}

/// Decides how inputs reach the provider; `auto` prefers what needs nothing extra.
fn input_route(config: &Config, blobs: &BlobStore) -> InputRoute {
    let presigned = InputRoute::Presigned(config.storage.input_presign_ttl_secs);
    match config.storage.input_mode {
        InputMode::Public => InputRoute::Public,
        InputMode::Presigned => presigned,
        InputMode::Proxy => InputRoute::Proxy,
        InputMode::KieUpload => InputRoute::ProviderUpload,
        InputMode::Auto if blobs.has_public_base() => InputRoute::Public,
        InputMode::Auto if blobs.is_s3() => presigned,
        InputMode::Auto => InputRoute::Proxy,
    }
}
