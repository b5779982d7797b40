//! The command-line client: `darkroom generate`, `darkroom tasks …` and
//! `darkroom batches …` against a running darkroom, over its HTTP API only (uploads,
//! submits, follows the tasks live, downloads results), like the command-line clients of
//! hosted image APIs. Results and `--json` documents go to stdout; progress and reasons
//! to stderr.

pub mod api;
mod commands;
mod follow;
mod generate;
mod progress;

use std::path::PathBuf;

use serde_json::json;

pub use api::{Api, ClientError};

/// Every task succeeded (or the command did what it was asked).
pub const EXIT_OK: u8 = 0;
/// A task failed, was canceled or expired, or was not final within `--timeout`.
pub const EXIT_TASK_FAILED: u8 = 1;
/// The command line is wrong, or names a file that cannot be read (clap uses 2 as well).
pub const EXIT_USAGE: u8 = 2;
/// The server could not be reached, refused the key, or refused the request.
pub const EXIT_REQUEST: u8 = 3;

/// Where the server is and how to talk to it; every client command takes these.
#[derive(clap::Args, Clone, Debug)]
pub struct Connection {
    /// The darkroom server's URL.
    #[arg(
        long,
        env = "DARKROOM_SERVER",
        default_value = "http://127.0.0.1:3000",
        global = true
    )]
    pub server: String,
    /// API key, sent as `Authorization: Bearer` (needed when the server has keys on).
    #[arg(long, env = "DARKROOM_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print one JSON document on stdout and no progress: for scripts.
    #[arg(long, global = true)]
    pub json: bool,
}

/// How long and how to follow tasks.
#[derive(clap::Args, Clone, Debug)]
pub struct Watching {
    /// Stop waiting after this many seconds (exit 1 naming the unfinished tasks);
    /// default: wait until every task is final.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Follow by polling instead of the event stream (for proxies that buffer streams).
    #[arg(long)]
    pub poll: bool,
}

/// `darkroom generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(flatten)]
    pub watching: Watching,
    /// What to do with each image.
    #[arg(long, short)]
    pub prompt: String,
    /// `kie` or `gemini` (default: the server's).
    #[arg(long)]
    pub provider: Option<String>,
    /// 1:1, 9:16, 16:9, 3:4, 4:3, 3:2, 2:3, 5:4, 4:5, 21:9 or auto (default 1:1).
    #[arg(long)]
    pub aspect_ratio: Option<String>,
    /// Output format: png (default) or jpeg.
    #[arg(long, value_name = "png|jpeg")]
    pub format: Option<String>,
    /// Submit the images as one batch (`POST /api/batches`) and report its id.
    #[arg(long)]
    pub batch: bool,
    /// Directory for the results, `<taskId>-<n>.<ext>` (n from 0); made if missing.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Local image files (uploaded first) and http(s) image URLs; one task each.
    #[arg(required = true, value_name = "FILE_OR_URL")]
    pub images: Vec<String>,
}

/// `darkroom tasks …`.
#[derive(clap::Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: TasksCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TasksCommand {
    /// List tasks, newest first.
    List {
        /// Only these states, comma-separated (queued, running, succeeded, failed, …).
        #[arg(long)]
        state: Option<String>,
        /// Only this batch's tasks.
        #[arg(long)]
        batch: Option<String>,
        /// Tasks per page, 1-200.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The next page: the cursor the previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show everything about a task.
    Show { id: String },
    /// Cancel an unfinished task.
    Cancel { id: String },
    /// Try a failed or expired task again, as a new task.
    Retry { id: String },
    /// Wait until the tasks are final; exit 0 only if all succeeded.
    Wait {
        #[arg(required = true)]
        ids: Vec<String>,
        /// Download the results into this directory too.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        watching: Watching,
    },
}

/// `darkroom batches …`.
#[derive(clap::Args, Debug)]
pub struct BatchesArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: BatchesCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum BatchesCommand {
    /// Show a batch: counts per state, credits, its tasks.
    Show { id: String },
    /// Download the ZIP of a finished batch's results (the server refuses an unfinished one).
    Zip {
        id: String,
        /// The file to write (default: `<batchId>.zip` here).
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// Wait for the batch to finish first (the server holds the request meanwhile).
        #[arg(long)]
        wait: bool,
    },
}

pub async fn generate(args: GenerateArgs) -> u8 {
    let json = args.connection.json;
    finish(json, generate::run(&args).await)
}

pub async fn tasks(args: TasksArgs) -> u8 {
    let json = args.connection.json;
    finish(json, commands::tasks(&args).await)
}

pub async fn batches(args: BatchesArgs) -> u8 {
    let json = args.connection.json;
    finish(json, commands::batches(&args).await)
}

/// The exit code; an error is one sentence on stderr (and a JSON document with `--json`).
fn finish(json: bool, result: Result<u8, ClientError>) -> u8 {
    match result {
        Ok(code) => code,
        Err(error) => {
            if json {
                let document =
                    json!({"error": {"code": error.code(), "message": error.to_string()}});
                println!("{document}");
            }
            say(&format!("darkroom: {error}"));
            error.exit_code()
        }
    }
}

/// One line on stderr.
// A command-line tool's reasons and notes go to stderr, so stdout carries only results
// (file names, ids, the `--json` document) for pipes and scripts.
#[allow(clippy::print_stderr)]
fn say(line: &str) {
    eprintln!("{line}");
}
