//! The `darkroom` command: parse the CLI, load configuration, install logging, call the
//! library. The client commands (`generate`, `tasks`, `batches`) live in
//! `darkroom::client`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use darkroom::config::{
    Config, ErrorRates, GeminiSimulatorConfig, LatencyRange, LogConfig, LogFormat, SimulatorConfig,
};
use darkroom::providers::sim::settings as simulators;
use darkroom::providers::sim::{GeminiSim, KieSim, KieSimConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "darkroom",
    version,
    about = "Asynchronous image-generation gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default). Without configuration: SQLite and a bucket directory
    /// under ./data and the built-in KIE and Gemini simulators, on 127.0.0.1:3000.
    #[command(after_help = SERVE_HELP)]
    Serve(ServeArgs),
    /// Generate images on a running darkroom: upload files, submit, follow, download.
    Generate(Box<darkroom::client::GenerateArgs>),
    /// List, show, cancel, retry or wait for tasks on a running darkroom.
    Tasks(darkroom::client::TasksArgs),
    /// Show a batch or download its results as a ZIP from a running darkroom.
    Batches(darkroom::client::BatchesArgs),
    /// Run the KIE-compatible simulator on its own.
    KieSim(Box<KieSimArgs>),
    /// Run the Gemini-compatible simulator (generateContent) on its own.
    GeminiSim(Box<GeminiSimArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Rebuild the database from the bucket's task records (kie-tasks/{taskId}.json) after
    /// the database was lost: adds the tasks it lacks, never changes a stored one.
    Reindex(ReindexArgs),
    /// Delete finished tasks older than the retention period (DARKROOM_RETENTION_DAYS or
    /// --days) with their results, records and rows, and old uploads no remaining task
    /// uses; never an unfinished task or what it uses. Prints what went (or would go).
    Gc(GcArgs),
    /// Copy a darkroom database into another one, SQLite to PostgreSQL or back: every task,
    /// batch, key, upload, webhook delivery and secret, in batches, then count both sides.
    /// Stop darkroom first. Exit code 0 when verified, 4 when the counts disagree.
    MigrateDb(MigrateDbArgs),
    /// Manage API keys (stored in the database as hashes only).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `serve --help`'s last words: the variables people set first.
const SERVE_HELP: &str = "\
Each flag wins over its variable; every other setting is a variable or a key of the
configuration file. The ones most often set:
  DARKROOM_LISTEN / PORT     host:port / port only (default 127.0.0.1:3000)
  DARKROOM_DATA_DIR          SQLite database and local bucket (default ./data)
  DARKROOM_CONFIG            TOML configuration file (default ./darkroom.toml if present)
  DARKROOM_PUBLIC_URL        how clients and KIE reach this server
  DARKROOM_API_KEYS          name:key,... : require API keys
  KIE_API_TOKEN, KIE_CALLBACK_URL   real KIE instead of the simulator
  GEMINI_API_KEY             real Gemini instead of the simulator
  R2_ACCOUNT_ID, R2_ACCESS_KEY_ID, R2_SECRET_ACCESS_KEY, R2_BUCKET_NAME   an R2/S3 bucket
  DARKROOM_LOG               log filter (default info)
.env.local and .env in the working directory are read too. darkroom.example.toml lists
every key with its variable and default.";

#[derive(clap::Args)]
struct ServeArgs {
    /// Listen on this port, on the configured host [env: PORT].
    #[arg(long)]
    port: Option<u16>,
    /// Listen on this HOST:PORT [env: DARKROOM_LISTEN].
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<SocketAddr>,
    /// Keep the SQLite database and the local bucket here [env: DARKROOM_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read this TOML configuration file [env: DARKROOM_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ServeArgs {
    /// The flags as the variables they stand for, which they win over.
    fn as_variables(&self) -> Vec<(&'static str, String)> {
        let mut vars = Vec::new();
        if let Some(listen) = self.listen {
            vars.push(("DARKROOM_LISTEN", listen.to_string()));
        }
        if let Some(dir) = &self.data_dir {
            vars.push(("DARKROOM_DATA_DIR", dir.display().to_string()));
        }
        if let Some(file) = &self.config {
            vars.push((
                darkroom::config::CONFIG_FILE_VAR,
                file.display().to_string(),
            ));
        }
        vars
    }
}

#[derive(clap::Args)]
struct ReindexArgs {
    /// The data directory of the SQLite database and the local bucket [env: DARKROOM_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read this TOML configuration file [env: DARKROOM_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// No progress on stderr, only the summary.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct GcArgs {
    /// Report what would be deleted, and delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete what finished more than DAYS days ago [default: DARKROOM_RETENTION_DAYS].
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    days: Option<u32>,
    /// The data directory of the SQLite database and the local bucket [env: DARKROOM_DATA_DIR].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Read this TOML configuration file [env: DARKROOM_CONFIG].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct MigrateDbArgs {
    /// The database to copy from: sqlite://PATH or postgres://USER@HOST:PORT/DATABASE (its
    /// pending migrations are applied; nothing else in it changes).
    #[arg(long, value_name = "URL")]
    from: String,
    /// The database to copy into (created for SQLite; must exist for PostgreSQL). It must
    /// hold no rows, unless --allow-non-empty.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Copy into a database that already holds rows: add the rows it lacks, change none it
    /// holds (finishes an interrupted copy).
    #[arg(long)]
    allow_non_empty: bool,
    /// Rows read and written per transaction.
    #[arg(long, value_name = "ROWS", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
    /// No progress on stderr, only the summary.
    #[arg(long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a new random key for NAME, print it once, store only its hash.
    Create {
        /// The key's name: the owner of everything made with it (letters, digits, - _ .).
        name: String,
        /// Credits its tasks may use per UTC day (estimated before each create, corrected
        /// by what the provider reports); without it, only the global budget applies.
        #[arg(long, value_name = "N")]
        daily_credits: Option<u32>,
    },
    /// Set or remove NAME's daily credit budget (stored or DARKROOM_API_KEYS keys alike).
    /// Tasks waiting on it are sent again at once when it is raised or removed.
    Budget {
        name: String,
        /// Credits its tasks may use per UTC day.
        #[arg(
            long,
            value_name = "N",
            required_unless_present = "none",
            conflicts_with = "none"
        )]
        daily_credits: Option<u32>,
        /// Remove the key's budget: only the global one applies.
        #[arg(long)]
        none: bool,
    },
    /// List keys: name, the key's first characters, when made, whether revoked.
    List,
    /// Revoke NAME's key: it stops working within 30 seconds on running servers. Its
    /// webhook secret is kept: it belongs to the name, like the key's tasks.
    Revoke { name: String },
    /// Print the whsec_ secret that signs the webhooks of NAME's tasks (made on first use).
    WebhookSecret {
        /// A key's name: stored (live or revoked) or in DARKROOM_API_KEYS.
        name: String,
        /// Replace it with a new one; for 24 hours deliveries carry signatures with both.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(clap::Args)]
struct KieSimArgs {
    /// Port to listen on (127.0.0.1 unless --host says otherwise).
    #[arg(long, default_value_t = 9090)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Generation time in milliseconds, MIN-MAX.
    #[arg(long, default_value = "1000-3000")]
    latency_ms: LatencyRange,
    /// Share of tasks that fail (0..1).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Share of callbacks delivered more than once (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicate_rate: f64,
    /// Deliveries of a duplicated callback.
    #[arg(long, default_value_t = 2)]
    duplicate_count: u32,
    /// Share of callbacks never sent (0..1).
    #[arg(long, default_value_t = 0.0)]
    drop_rate: f64,
    /// Share of tasks whose callback arrives before the createTask answer (0..1).
    #[arg(long, default_value_t = 0.0)]
    early_callback_rate: f64,
    /// Sign callbacks as KIE does with this webhook HMAC key.
    #[arg(long, env = "KIE_SIM_HMAC_KEY")]
    hmac_key: Option<String>,
    /// Require this bearer token on API calls.
    #[arg(long, env = "KIE_SIM_TOKEN")]
    token: Option<String>,
    /// Creates allowed per 10 s window.
    #[arg(long, default_value_t = 20)]
    rate_limit: u32,
    /// Answer errors as HTTP 200 with the code only in the JSON envelope.
    #[arg(long)]
    errors_in_body: bool,
    /// Base URL for result links (default: http://HOST:PORT).
    #[arg(long)]
    public_url: Option<String>,
    /// Deliveries of a duplicated callback are random in DUPLICATE_COUNT..=this.
    #[arg(long, default_value_t = 0)]
    duplicate_count_max: u32,
    /// Deliver a duplicated callback's copies all at once.
    #[arg(long)]
    concurrent_duplicates: bool,
    /// Share of creates refused with 429 and Retry-After: 1 (0..1).
    #[arg(long, default_value_t = 0.0)]
    http_429_rate: f64,
    /// Share of creates refused with 500 or 455 (0..1).
    #[arg(long, default_value_t = 0.0)]
    server_error_rate: f64,
    /// Share of creates that make the task but answer only after --timeout-hang-ms (0..1).
    #[arg(long, default_value_t = 0.0)]
    timeout_rate: f64,
    #[arg(long, default_value_t = 60_000)]
    timeout_hang_ms: u64,
    /// Extra delay before callbacks, MIN-MAX milliseconds.
    #[arg(long, default_value = "0")]
    late_callback_ms: LatencyRange,
    /// Delay before serving a result file, milliseconds.
    #[arg(long, default_value_t = 0)]
    download_delay_ms: u64,
    /// The account's starting credit balance; creates get 402 when it runs out.
    #[arg(long, default_value_t = 100_000)]
    credits: u64,
    /// Long side of generated images in pixels (16..=4096); a result's size follows from it
    /// and from how noisy the input is.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..=4096))]
    image_long_side: u32,
    /// Share of tasks forgotten right after createTask accepted them: recordInfo answers
    /// 404 "not found" for them and no callback comes (0..1).
    #[arg(long, default_value_t = 0.0)]
    forget_rate: f64,
}

#[derive(clap::Args)]
struct GeminiSimArgs {
    /// Port to listen on (127.0.0.1 unless --host says otherwise).
    #[arg(long, default_value_t = 9091)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Generation time in milliseconds, MIN-MAX.
    #[arg(long, default_value = "2000-6000")]
    latency_ms: LatencyRange,
    /// Share of prompts blocked with promptFeedback.blockReason (0..1).
    #[arg(long, default_value_t = 0.0)]
    block_rate: f64,
    /// Share of answers stopped by finishReason IMAGE_SAFETY, without an image (0..1).
    #[arg(long, default_value_t = 0.0)]
    image_safety_rate: f64,
    /// Share of text-only answers (0..1).
    #[arg(long, default_value_t = 0.0)]
    text_only_rate: f64,
    /// HTTP errors at a rate, STATUS=RATE; repeatable or comma-separated
    /// (400, 403, 404, 429, 500, 503, 504), e.g. --error 429=0.2 --error 503=0.05.
    #[arg(long = "error", value_name = "STATUS=RATE")]
    errors: Vec<String>,
    /// Require this key in x-goog-api-key (or ?key=): 403 without one, 400 for another.
    #[arg(long, env = "GEMINI_SIM_API_KEY")]
    api_key: Option<String>,
    /// Models served (repeatable); others answer 404.
    #[arg(long = "model", default_value = "gemini-2.5-flash-image")]
    models: Vec<String>,
}

fn init_tracing(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    // Colours only for a person at a terminal: never in files, pipes or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    if log.format == LogFormat::Json {
        // One object per line; the span fields (task_id, batch_id, provider_task_id) are in
        // `span` and `spans`.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.init();
    }
}

fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown requested; finishing in-flight work");
        trigger.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let serve_defaults = ServeArgs {
        port: None,
        listen: None,
        data_dir: None,
        config: None,
    };
    match cli.command.unwrap_or(Command::Serve(serve_defaults)) {
        Command::Serve(args) => serve(&args).await?,
        Command::KieSim(args) => kie_sim(*args).await?,
        Command::GeminiSim(args) => gemini_sim(*args).await?,
        Command::Migrate => migrate().await?,
        Command::Reindex(args) => return reindex(&args).await,
        Command::Gc(args) => return gc(&args).await,
        Command::MigrateDb(args) => return migrate_db(&args).await,
        Command::Keys { command } => keys(command).await?,
        Command::Generate(args) => return Ok(darkroom::client::generate(*args).await.into()),
        Command::Tasks(args) => return Ok(darkroom::client::tasks(args).await.into()),
        Command::Batches(args) => return Ok(darkroom::client::batches(args).await.into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_config() -> anyhow::Result<Config> {
    // A configuration error is a sentence naming the key; print it as it is.
    Config::load().map_err(|e| anyhow::anyhow!("{e}"))
}

async fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load_with(&args.as_variables()).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(port) = args.port {
        config.server.listen.set_port(port);
    }
    init_tracing(&config.log);
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    for name in Config::unknown_darkroom_vars(&env) {
        tracing::warn!(variable = %name, "unknown DARKROOM_ variable ignored; check its spelling against darkroom.example.toml");
    }
    // One serving process per SQLite file; held until the process ends.
    let _serving = darkroom::storage::sqlite_lock::lock_for_serving(&config.database_url())
        .map_err(|e| anyhow::anyhow!(e))?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / --port, DARKROOM_LISTEN / PORT)",
                config.server.listen
            )
        })?;
    let bound = listener.local_addr()?;
    let app = darkroom::App::build(config, bound).await?;
    app.serve(listener, shutdown_on_signal()).await
}

async fn migrate() -> anyhow::Result<()> {
    let config = load_config()?;
    init_tracing(&config.log);
    if config.database.url.is_none() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let url = config.database_url();
    let shown = darkroom::storage::redact_url(&url);
    let opened = darkroom::storage::open(&url, 1, darkroom::storage::Durability::Normal)
        .await
        .with_context(|| format!("cannot open the database {shown}"))?;
    opened.close().await;
    tracing::info!(database = %shown, "migrations applied");
    Ok(())
}

/// What the offline maintenance commands (`reindex`, `gc`) work on: `serve`'s database and
/// bucket, from the same configuration (flags win over their variables).
struct Offline {
    opened: darkroom::storage::Opened,
    blobs: darkroom::storage::BlobStore,
    /// The database URL without its password.
    shown: String,
    config: Config,
}

async fn open_offline(
    data_dir: Option<&PathBuf>,
    file: Option<&PathBuf>,
) -> anyhow::Result<Offline> {
    let flags = ServeArgs {
        port: None,
        listen: None,
        data_dir: data_dir.cloned(),
        config: file.cloned(),
    };
    let config = Config::load_with(&flags.as_variables()).map_err(|e| anyhow::anyhow!("{e}"))?;
    init_tracing(&config.log);
    if config.database.url.is_none() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let url = config.database_url();
    let shown = darkroom::storage::redact_url(&url);
    let opened = darkroom::storage::open(&url, 2, darkroom::storage::Durability::Normal)
        .await
        .with_context(|| format!("cannot open the database {shown}"))?;
    // The bucket's URLs are not built here: records carry theirs, and only keys are read.
    let base = url::Url::parse(&format!("http://{}", config.server.listen))?;
    let blobs = darkroom::storage::BlobStore::from_config(&config, base)
        .context("cannot open the bucket")?;
    Ok(Offline {
        opened,
        blobs,
        shown,
        config,
    })
}

async fn reindex(args: &ReindexArgs) -> anyhow::Result<ExitCode> {
    let Offline {
        opened,
        blobs,
        shown,
        config,
    } = open_offline(args.data_dir.as_ref(), args.config.as_ref()).await?;
    println!("reindexing {} into {shown}", blobs.describe());
    let prices = darkroom::budget_settings(&config.budget).prices;
    let done = darkroom::reindex::reindex(&blobs, opened.repo.as_ref(), &prices, !args.quiet).await;
    opened.close().await;
    let summary = done?;
    print!("{}", summary.report());
    Ok(if summary.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

async fn gc(args: &GcArgs) -> anyhow::Result<ExitCode> {
    let Offline {
        opened,
        blobs,
        shown,
        config,
    } = open_offline(args.data_dir.as_ref(), args.config.as_ref()).await?;
    let Some(days) = args.days.or(config.retention.days) else {
        opened.close().await;
        anyhow::bail!(
            "no retention period: set DARKROOM_RETENTION_DAYS (or days in [retention]) or pass --days"
        );
    };
    let now = chrono::Utc::now().timestamp_millis();
    let options = darkroom::retention::SweepOptions::days(days, now, args.dry_run);
    let what = if args.dry_run {
        "dry run, nothing is deleted"
    } else {
        "deleting"
    };
    println!(
        "gc ({what}): tasks finished more than {days} days ago, in {shown} and {}",
        blobs.describe()
    );
    let done = darkroom::retention::sweep(&blobs, opened.repo.as_ref(), &options, None).await;
    opened.close().await;
    let report = done?;
    print!("{}", report.text());
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

async fn migrate_db(args: &MigrateDbArgs) -> anyhow::Result<ExitCode> {
    init_tracing(&LogConfig::default());
    darkroom::migrate_db::check_urls(&args.from, &args.to).map_err(anyhow::Error::msg)?;
    let durability = darkroom::storage::Durability::Normal;
    let (from, to) = (
        darkroom::storage::redact_url(&args.from),
        darkroom::storage::redact_url(&args.to),
    );
    let source = darkroom::storage::open(&args.from, 2, durability)
        .await
        .with_context(|| format!("cannot open the source database {from}"))?;
    let target = match darkroom::storage::open(&args.to, 2, durability).await {
        Ok(target) => target,
        Err(e) => {
            source.close().await;
            return Err(
                anyhow::Error::new(e).context(format!("cannot open the target database {to}"))
            );
        }
    };
    println!(
        "copying {from} ({}) into {to} ({}), {} rows a transaction",
        source.backend.name(),
        target.backend.name(),
        args.batch_size
    );
    let options = darkroom::migrate_db::Options {
        batch_size: args.batch_size as usize,
        allow_non_empty: args.allow_non_empty,
        show_progress: !args.quiet,
    };
    let done =
        darkroom::migrate_db::migrate_db(source.repo.as_ref(), target.repo.as_ref(), &options)
            .await;
    source.close().await;
    target.close().await;
    let report = done?;
    print!("{}", report.text());
    Ok(if report.verified() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(4)
    })
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let config = load_config()?;
    if config.database.url.is_none() {
        std::fs::create_dir_all(&config.data_dir)?;
    }
    let url = config.database_url();
    let opened = darkroom::storage::open(&url, 1, darkroom::storage::Durability::Normal)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                darkroom::storage::redact_url(&url)
            )
        })?;
    let repo = opened.access.clone();
    let now = chrono::Utc::now().timestamp_millis();
    match command {
        KeysCommand::Create {
            name,
            daily_credits,
        } => {
            anyhow::ensure!(
                darkroom::config::is_key_name(&name),
                "the name must be 1-64 letters, digits, '-', '_' or '.'"
            );
            let key = darkroom::domain::api_key::generate();
            let created = repo
                .create_api_key(&name, &key.hash, &key.hint, now)
                .await?;
            anyhow::ensure!(
                created,
                "a key named {name:?} already exists; revoke it first (darkroom keys revoke {name})"
            );
            if let Some(credits) = daily_credits {
                opened
                    .repo
                    .set_daily_budget(&name, Some(i64::from(credits)), now)
                    .await?;
            }
            println!("API key {name:?} created. It is shown only this once; store it now:");
            println!("{}", key.key);
            if let Some(credits) = daily_credits {
                println!("Its tasks may use {credits} credits per UTC day.");
            }
            println!(
                "Clients send it as: Authorization: Bearer <key>. A server that started without any key must be restarted to require keys."
            );
            // A name used before (by a revoked key) keeps its secret, as it keeps its tasks.
            let secret = darkroom::webhooks::key_secret(repo.as_ref(), &name, now).await?;
            println!(
                "Webhooks of its tasks are signed with this secret (also at GET /api/webhook-secret, or darkroom keys webhook-secret {name}):"
            );
            println!("{}", secret.secret);
        }
        KeysCommand::Budget {
            name,
            daily_credits,
            none: _,
        } => {
            anyhow::ensure!(
                darkroom::config::is_key_name(&name),
                "the name must be 1-64 letters, digits, '-', '_' or '.'"
            );
            let credits = daily_credits.map(i64::from);
            opened.repo.set_daily_budget(&name, credits, now).await?;
            // Waiting tasks are looked at again: those still over the budget wait again.
            let woken = opened.repo.wake_budget_waiters(Some(&name), now).await?;
            if let Some(credits) = credits {
                println!("Tasks of {name:?} may use {credits} credits per UTC day.");
            } else {
                println!("{name:?} has no daily credit budget of its own now.");
            }
            if woken > 0 {
                println!("{woken} waiting tasks are sent again now if the budget allows.");
            }
        }
        KeysCommand::List => {
            let budgets = opened.repo.daily_budgets().await?;
            let keys = repo.list_api_keys().await?;
            if keys.is_empty() {
                println!("no API keys stored (DARKROOM_API_KEYS may still name some)");
            }
            for key in keys {
                let created = darkroom::clock::iso_time(key.created_at);
                let state = key.revoked_at.map_or_else(
                    || "live".to_owned(),
                    |at| format!("revoked {}", darkroom::clock::iso_time(at)),
                );
                println!("{}\t{}…\tcreated {created}\t{state}", key.name, key.hint);
            }
            // Then the daily credit budgets, by name (stored keys and DARKROOM_API_KEYS alike).
            if !budgets.is_empty() {
                println!("daily credit budgets:");
            }
            for (name, credits) in budgets {
                println!("{name}\t{credits} credits/day");
            }
        }
        KeysCommand::Revoke { name } => {
            anyhow::ensure!(
                repo.revoke_api_key(&name, now).await?,
                "no live key named {name:?}"
            );
            println!("API key {name:?} revoked.");
        }
        KeysCommand::WebhookSecret { name, rotate } => {
            // Refuse names no key has, so a typo does not quietly make a secret nobody uses.
            let stored = repo.list_api_keys().await?.iter().any(|k| k.name == name);
            let configured = config
                .configured_api_keys()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .iter()
                .any(|(n, _)| *n == name);
            anyhow::ensure!(
                stored || configured,
                "no key named {name:?} (neither stored nor in DARKROOM_API_KEYS)"
            );
            if rotate {
                let record =
                    darkroom::webhooks::rotate_key_secret(repo.as_ref(), &name, now).await?;
                println!("Webhook secret of {name:?} rotated. The new secret:");
                println!("{}", record.secret);
                if let Some(until) = record.previous_valid_until(now) {
                    println!(
                        "Until {}, deliveries are also signed with the previous secret.",
                        darkroom::clock::iso_time(until)
                    );
                }
            } else {
                let record = darkroom::webhooks::key_secret(repo.as_ref(), &name, now).await?;
                println!("{}", record.secret);
            }
        }
    }
    Ok(())
}

async fn kie_sim(args: KieSimArgs) -> anyhow::Result<()> {
    init_tracing(&LogConfig::default());
    for (flag, rate) in [
        ("--fail-rate", args.fail_rate),
        ("--duplicate-rate", args.duplicate_rate),
        ("--drop-rate", args.drop_rate),
        ("--early-callback-rate", args.early_callback_rate),
        ("--http-429-rate", args.http_429_rate),
        ("--server-error-rate", args.server_error_rate),
        ("--timeout-rate", args.timeout_rate),
        ("--forget-rate", args.forget_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{flag} must be between 0 and 1 (got {rate})"
        );
    }
    // The flags fill the same section as [simulator] in serve's configuration.
    let knobs = SimulatorConfig {
        latency_ms: args.latency_ms,
        fail_rate: args.fail_rate,
        duplicate_rate: args.duplicate_rate,
        duplicate_count: args.duplicate_count,
        drop_rate: args.drop_rate,
        early_callback_rate: args.early_callback_rate,
        forget_rate: args.forget_rate,
        rate_limit: args.rate_limit,
    };
    let config = KieSimConfig {
        token: args.token,
        rate_window: Duration::from_secs(10),
        errors_in_body: args.errors_in_body,
        public_url: args.public_url,
        duplicate_count_max: args.duplicate_count_max,
        concurrent_duplicates: args.concurrent_duplicates,
        http_429_rate: args.http_429_rate,
        server_error_rate: args.server_error_rate,
        timeout_rate: args.timeout_rate,
        timeout_hang: Duration::from_millis(args.timeout_hang_ms),
        late_callback_ms: args.late_callback_ms.as_millis(),
        download_delay_ms: args.download_delay_ms,
        credits: args.credits,
        image_long_side: args.image_long_side,
        ..simulators::kie(&knobs, args.hmac_key)
    };
    let addr = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let sim = KieSim::new(config, format!("http://{bound}"));
    tracing::info!(address = %bound, "KIE simulator listening");
    sim.serve(listener, shutdown_on_signal()).await?;
    Ok(())
}

async fn gemini_sim(args: GeminiSimArgs) -> anyhow::Result<()> {
    init_tracing(&LogConfig::default());
    for (flag, rate) in [
        ("--block-rate", args.block_rate),
        ("--image-safety-rate", args.image_safety_rate),
        ("--text-only-rate", args.text_only_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{flag} must be between 0 and 1 (got {rate})"
        );
    }
    let errors: ErrorRates = args
        .errors
        .join(",")
        .parse()
        .map_err(|e| anyhow::anyhow!("--error {e}"))?;
    // The flags fill the same section as [gemini.simulator] in serve's configuration.
    let knobs = GeminiSimulatorConfig {
        latency_ms: args.latency_ms,
        block_rate: args.block_rate,
        image_safety_rate: args.image_safety_rate,
        text_only_rate: args.text_only_rate,
        errors,
    };
    let config = simulators::gemini(&knobs, args.models, args.api_key);
    let addr = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "Gemini simulator listening");
    GeminiSim::new(config)
        .serve(listener, shutdown_on_signal())
        .await?;
    Ok(())
}
