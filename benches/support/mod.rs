//! What the benchmarks share: their arguments, this process's memory, the KIE simulator,
//! an app built from settings, and a task row. Each benchmark is a process of its own that
//! measures one side, so the memory it reports belongs to that side.
#![allow(dead_code)]

use std::collections::HashMap;

use darkroom::config::Config;
use darkroom::providers::sim::{KieSim, KieSimConfig};
use darkroom::storage::NewTask;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The positional arguments (`cargo bench` adds `--bench`, which is skipped).
pub fn positional_args() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect()
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), in KiB; 0 when unreadable.
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Serves a KIE simulator on a loopback port until `shutdown`; returns its address.
pub async fn start_sim(config: KieSimConfig, shutdown: &CancellationToken) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = KieSim::new(config, format!("http://{addr}"));
    tokio::spawn(sim.serve(listener, shutdown.clone()));
    addr.to_string()
}

/// darkroom built from these settings (as environment variables would give them), its
/// workers off: the benchmark drives the engine itself.
pub async fn build_app(settings: HashMap<String, String>) -> darkroom::App {
    let mut settings = settings;
    settings.insert("DARKROOM_WORKERS".into(), "false".into());
    settings
        .entry("DARKROOM_LOG".into())
        .or_insert_with(|| "warn".into());
    let config = Config::from_env(&settings).unwrap();
    darkroom::App::build(config, "127.0.0.1:3999".parse().unwrap())
        .await
        .unwrap()
}

/// Turns `(name, value)` pairs into the settings `build_app` takes.
pub fn settings<const N: usize>(pairs: [(&str, String); N]) -> HashMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A queued KIE task with a fixed prompt and input (the repository contract's task).
pub fn new_task(created_at: i64) -> NewTask {
    NewTask {
        prompt: "bench".into(),
        ..darkroom::storage::contract::new_task(None, 0, created_at)
    }
}

/// CPU time (user + system) this process has used so far, in seconds, from
/// `/proc/self/stat` (clock ticks of 1/100 s); 0 when unreadable.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}
