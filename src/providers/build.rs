//! Every provider built from the configuration, in one place: its client (or the built-in
//! simulator it talks to when no credentials are set), how many calls it may have running,
//! and its limits as plain numbers the engine turns into its gate. A new provider is one
//! more entry here and its keys in the configuration; nothing above this module changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::Provider;
use super::gemini::{GeminiClient, GeminiSettings};
use super::inputs::InputLoader;
use super::kie::KieClient;
use super::sim::{GeminiSim, KieSim, settings as sim_settings};
use crate::config::{self, Config, ProviderMode};
use crate::domain::request::Model;
use crate::net::Fetcher;
use crate::storage::BlobStore;

/// How hard darkroom may press one provider, as plain numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// At most this many submissions in any `create_window`; 0 means no limit.
    pub creates: usize,
    pub create_window: Duration,
    /// At most this many status queries in any second; 0 means no limit.
    pub queries_per_second: usize,
    /// Tasks submitting, submitted or running at once; 0 means no cap.
    pub max_in_flight: usize,
    /// Submission pauses while the provider's credit balance is below this; 0 means no
    /// floor. Only providers that report a balance ([`Provider::credits`]) have one.
    pub credit_floor: u64,
    /// How often the balance is read, when the provider reports one.
    pub credit_check: Duration,
}

impl Limits {
    /// No window and no cap: only the provider's concurrency bounds it.
    pub const NONE: Self = Self {
        creates: 0,
        create_window: Duration::from_secs(1),
        queries_per_second: 0,
        max_in_flight: 0,
        credit_floor: 0,
        credit_check: Duration::from_secs(300),
    };
}

/// One provider ready to register with the engine.
pub struct BuiltProvider {
    pub provider: Arc<dyn Provider>,
    /// Calls to it at once.
    pub concurrency: usize,
    pub limits: Limits,
    /// Whether it is the built-in simulator.
    pub simulator: bool,
    /// The model it generates with, for `/api/info` and the page.
    pub model: String,
}

/// Every provider of this instance, the first being the fallback default, and what was
/// made along the way.
pub struct BuiltProviders {
    pub providers: Vec<BuiltProvider>,
    /// The guarded outbound client: it trusts the configured hosts and the built-in KIE
    /// simulator's loopback address (whose result URLs point there), so it is made here,
    /// once that address is known. Gemini reads client input URLs through it; the engine
    /// and the webhook deliverer use it too.
    pub fetcher: Fetcher,
    /// The in-process KIE simulator, when no `KIE_API_TOKEN` is configured.
    pub kie_simulator: Option<Arc<KieSim>>,
    /// The in-process Gemini simulator, when no `GEMINI_API_KEY` is configured.
    pub gemini_simulator: Option<Arc<GeminiSim>>,
}

/// Builds KIE and Gemini from `config`, starting the built-in simulator of each provider
/// that has no credentials (on a loopback port of its own, served until `shutdown`).
/// Gemini reads uploaded inputs from `blobs`.
pub async fn build(
    config: &Config,
    blobs: &BlobStore,
    shutdown: CancellationToken,
) -> anyhow::Result<BuiltProviders> {
    let mut trusted: Vec<(String, u16)> = config
        .fetch
        .trusted_hosts
        .iter()
        .map(|h| (h.host.clone(), h.port))
        .collect();
    let kie_timeout = config.kie.request_timeout_secs;
    let (kie, kie_simulator): (Arc<dyn Provider>, Option<Arc<KieSim>>) =
        match config.provider_mode() {
            ProviderMode::Kie => {
                let token = config
                    .kie
                    .api_token
                    .clone()
                    .context("KIE_API_TOKEN is not set")?;
                let client = KieClient::new(
                    config.kie.base_url.clone(),
                    config.kie.upload_base_url.clone(),
                    token,
                    kie_timeout,
                )?;
                tracing::info!(base_url = %config.kie.base_url, "provider: KIE");
                (Arc::new(client), None)
            }
            ProviderMode::Simulator => {
                let (sim, addr) = start_kie_simulator(config, shutdown.clone()).await?;
                trusted.push((addr.ip().to_string(), addr.port()));
                let base = Url::parse(&format!("http://{addr}"))?;
                let token = config::Secret::new(hex::encode(rand::random::<[u8; 16]>()));
                // One simulator answers both the jobs and the file upload API.
                let client = KieClient::new(base.clone(), base, token, kie_timeout)?;
                (Arc::new(client), Some(sim))
            }
        };
    let (connect_timeout, fetch_timeout) = config.fetch_timeouts();
    let fetcher = Fetcher::new(trusted, connect_timeout, fetch_timeout)?;
    let (gemini, gemini_simulator) = build_gemini(config, blobs, &fetcher, shutdown).await?;
    let providers = vec![
        BuiltProvider {
            provider: kie,
            concurrency: config.engine.dispatch_concurrency,
            // A margin on the window: the provider counts at arrival, we count at sending.
            limits: Limits {
                creates: config.kie.creates_per_window,
                create_window: config.kie.create_window_secs + Duration::from_millis(500),
                queries_per_second: config.kie.queries_per_second,
                max_in_flight: config.kie.max_in_flight,
                credit_floor: config.kie.credit_floor,
                credit_check: config.kie.credit_check_secs,
            },
            simulator: kie_simulator.is_some(),
            model: Model::default().as_str().to_owned(),
        },
        BuiltProvider {
            provider: gemini,
            concurrency: config.gemini.concurrency,
            // Gemini has no documented request window here: its concurrency slots bound it,
            // and a 429 pauses it like KIE (for Gemini's RetryInfo delay).
            limits: Limits::NONE,
            simulator: gemini_simulator.is_some(),
            model: config.gemini.model.clone(),
        },
    ];
    Ok(BuiltProviders {
        providers,
        fetcher,
        kie_simulator,
        gemini_simulator,
    })
}

/// Binds the built-in KIE simulator on a loopback port of its own and serves it.
async fn start_kie_simulator(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<KieSim>, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    // Signs callbacks as KIE would when the operator configured KIE's HMAC key.
    let hmac_key = config
        .kie
        .webhook_hmac_key
        .as_ref()
        .map(|k| k.expose().to_owned());
    let sim_config = sim_settings::kie(&config.simulator, hmac_key);
    let sim = KieSim::new(sim_config, format!("http://{addr}"));
    tokio::spawn(sim.clone().serve(listener, shutdown));
    tracing::warn!(
        address = %addr,
        "provider: the built-in KIE simulator (no KIE_API_TOKEN set); images are generated locally and no credits are spent"
    );
    Ok((sim, addr))
}

/// The Gemini provider: Google's API when `GEMINI_API_KEY` is set, otherwise the built-in
/// simulator on a loopback port of its own, reached through the same client (with a key the
/// simulator demands, so the whole path is exercised).
async fn build_gemini(
    config: &Config,
    blobs: &BlobStore,
    fetcher: &Fetcher,
    shutdown: CancellationToken,
) -> anyhow::Result<(Arc<dyn Provider>, Option<Arc<GeminiSim>>)> {
    let (base_url, api_key, simulator) = match &config.gemini.api_key {
        Some(key) => {
            tracing::info!(base_url = %config.gemini.base_url, model = %config.gemini.model, "provider: Gemini");
            (config.gemini.base_url.clone(), key.clone(), None)
        }
        None => {
            let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
            let addr = listener.local_addr()?;
            let key = hex::encode(rand::random::<[u8; 16]>());
            let sim = GeminiSim::new(sim_settings::gemini(
                &config.gemini.simulator,
                vec![config.gemini.model.clone()],
                Some(key.clone()),
            ));
            tokio::spawn(sim.clone().serve(listener, shutdown));
            tracing::warn!(
                address = %addr,
                model = %config.gemini.model,
                "provider: the built-in Gemini simulator (no GEMINI_API_KEY set); provider \"gemini\" works, images are generated locally and nothing is billed"
            );
            (
                Url::parse(&format!("http://{addr}"))?,
                config::Secret::new(key),
                Some(sim),
            )
        }
    };
    let image_limits = config.image_limits();
    let (_, fetch_timeout) = config.fetch_timeouts();
    let settings = GeminiSettings {
        base_url,
        api_key,
        request_timeout: config.gemini.request_timeout_secs,
        inputs_timeout: fetch_timeout,
        max_request_bytes: config.gemini.max_request_bytes,
        // Base64 makes an image 4/3 its size; twice the result cap leaves room for the JSON
        // and a second image of ordinary size.
        max_answer_bytes: config.limits.max_result_bytes.saturating_mul(2),
        image_limits,
    };
    let inputs = InputLoader::new(
        blobs.clone(),
        fetcher.clone(),
        config.limits.max_upload_bytes,
        image_limits,
    );
    let client = GeminiClient::new(settings, inputs)?;
    Ok((Arc::new(client), simulator))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_credentials_both_simulators_run_kie_first_with_its_limits() {
        let mut config = Config::default();
        config.kie.creates_per_window = 20;
        config.kie.create_window_secs = Duration::from_secs(10);
        let blobs = BlobStore::memory(Url::parse("http://127.0.0.1:1").unwrap());
        let shutdown = CancellationToken::new();
        let built = build(&config, &blobs, shutdown.clone()).await.unwrap();
        let names: Vec<_> = built.providers.iter().map(|p| p.provider.name()).collect();
        assert_eq!(names, ["kie", "gemini"]);
        assert!(built.providers.iter().all(|p| p.simulator));
        assert!(built.kie_simulator.is_some() && built.gemini_simulator.is_some());
        let kie = &built.providers[0];
        assert_eq!(kie.limits.creates, 20);
        assert_eq!(kie.limits.create_window, Duration::from_millis(10_500));
        assert_eq!(kie.concurrency, config.engine.dispatch_concurrency);
        assert_eq!(built.providers[1].limits, Limits::NONE);
        assert_eq!(built.providers[1].model, config.gemini.model);
        shutdown.cancel();
    }
}
