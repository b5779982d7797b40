//! The cluster: three darkroom processes on one PostgreSQL database and one S3 bucket
//! (moto), against one KIE simulator with its create limit on (in this test's process, so
//! it outlives every darkroom and its record of every create can be read). Tasks are
//! submitted through all three in turn; each instance hands KIE the next one's callback
//! address, so callbacks land round-robin on instances other than the one that created
//! the task; one instance is SIGKILLed mid-run and restarted at once. An SSE client on
//! instance A follows everything.
//!
//! Checked: every task ends succeeded, or failed with a reason; at most one create per
//! task at the simulator, and one for each succeeded task; no create refused for the rate
//! limit and no window with more than the limit; exactly one stored result per succeeded
//! task; A's stream carries the end of every task, whichever instance ran it.

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    BIN, Running, free_port, fresh_postgres, new_s3_bucket, s3_env, serve_png, spawn_sim, task_ids,
};
use darkroom::providers::sim::KieSimConfig;
use futures::StreamExt;
use serde_json::{Value, json};

const TASKS: usize = 300;
const INSTANCES: usize = 3;
/// KIE's 20 creates per window; the window shortened from 10 s to keep the test short.
const CREATES: u32 = 20;
const WINDOW_SECS: u64 = 2;
const TOKEN: &str = "cluster-token";

struct Instance {
    port: u16,
    env: Vec<(&'static str, String)>,
    process: Running,
    /// Where the process writes its log (warnings and start-up lines).
    log: std::path::PathBuf,
}

impl Instance {
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `darkroom serve` with `env` (which names its port) in a data directory of its
    /// own; its log goes to a file there (the process and the file's path).
    fn start(env: &[(&'static str, String)]) -> (Running, std::path::PathBuf) {
        let data = tempfile::tempdir().unwrap().keep();
        let log = data.join("darkroom.log");
        let child = Command::new(BIN)
            .arg("serve")
            .current_dir(&data)
            .env("DARKROOM_DATA_DIR", &data)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("RUST_LOG", "warn,darkroom=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("darkroom starts");
        (Running(child), log)
    }

    /// Waits until the instance answers `/healthz`; failing after 60 s with whether the
    /// process is still running and the end of its log.
    async fn wait_up(&mut self, http: &reqwest::Client) {
        let url = format!("{}/healthz", self.base());
        let start = Instant::now();
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            let exited = self.process.0.try_wait().unwrap();
            if exited.is_some() || start.elapsed() > Duration::from_secs(60) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{url} did not come up after {:.1} s (process: {exited:?}); its log ends:\n{}",
                    start.elapsed().as_secs_f64(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every task's view, through one instance's `/api/tasks` pages.
async fn list_tasks(http: &reqwest::Client, base: &str) -> HashMap<String, Value> {
    let mut tasks = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}/api/tasks?limit=100&cursor={c}"),
            None => format!("{base}/api/tasks?limit=100"),
        };
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        for task in page["tasks"].as_array().unwrap() {
            tasks.insert(task["taskId"].as_str().unwrap().to_owned(), task.clone());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return tasks,
        }
    }
}

/// The ids of tasks whose final event an SSE stream carried, until `stop` or until it
/// carried `expected` of them.
async fn follow_finals(
    response: reqwest::Response,
    stop: tokio_util::sync::CancellationToken,
    expected: usize,
) -> HashSet<String> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut finals = HashSet::new();
    loop {
        let chunk = tokio::select! {
            () = stop.cancelled() => return finals,
            chunk = body.next() => chunk,
        };
        let Some(Ok(chunk)) = chunk else {
            return finals;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
                    continue;
                };
                if matches!(event["state"].as_str(), Some("succeeded" | "failed")) {
                    finals.insert(event["taskId"].as_str().unwrap_or_default().to_owned());
                    if finals.len() >= expected {
                        return finals;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_one_database_one_bucket_one_kill() {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let db = fresh_postgres().await;
    let bucket = new_s3_bucket().await;
    let input = serve_png().await;
    let sim = spawn_sim(KieSimConfig {
        token: Some(TOKEN.to_owned()),
        latency_ms: (100, 600),
        rate_limit: CREATES,
        rate_window: Duration::from_secs(WINDOW_SECS),
        ..KieSimConfig::default()
    })
    .await;
    let sim_addr = sim.addr.to_string();

    let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
    let mut instances: Vec<Instance> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let next = ports[(i + 1) % INSTANCES];
        let mut env: Vec<(&'static str, String)> = vec![
            ("DARKROOM_LISTEN", format!("127.0.0.1:{port}")),
            ("DARKROOM_DATABASE_URL", db.url.clone()),
            ("KIE_API_TOKEN", TOKEN.to_owned()),
            ("KIE_BASE_URL", format!("http://{sim_addr}")),
            (
                "KIE_CALLBACK_URL",
                format!("http://127.0.0.1:{next}/api/callback"),
            ),
            ("DARKROOM_TRUSTED_FETCH_HOSTS", sim_addr.clone()),
            ("DARKROOM_KIE_CREATES_PER_WINDOW", CREATES.to_string()),
            ("DARKROOM_KIE_CREATE_WINDOW_SECS", WINDOW_SECS.to_string()),
            ("DARKROOM_KIE_QUERIES_PER_SECOND", "0".to_owned()),
            ("DARKROOM_DISPATCH_CONCURRENCY", "8".to_owned()),
            ("DARKROOM_LEASE_SECS", "3".to_owned()),
            ("DARKROOM_UNCONFIRMED_WINDOW_SECS", "6".to_owned()),
            ("DARKROOM_FIRST_POLL_MS", "1000".to_owned()),
            ("DARKROOM_TICK_MS", "100".to_owned()),
        ];
        env.extend(s3_env(&bucket));
        let (process, log) = Instance::start(&env);
        instances.push(Instance {
            port: *port,
            env,
            process,
            log,
        });
    }
    for instance in &mut instances {
        instance.wait_up(&http).await;
    }

    let stop = tokio_util::sync::CancellationToken::new();
    let stream = http
        .get(format!("{}/api/events", instances[0].base()))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut follower = tokio::spawn(follow_finals(stream, stop.clone(), TASKS));

    let started = Instant::now();
    let mut ids: Vec<String> = Vec::with_capacity(TASKS);
    let mut through = [0usize; INSTANCES];
    let mut turn = 0;
    while ids.len() < TASKS {
        let body = json!({"prompt": "cluster", "imageUrls": vec![input.clone(); 10]});
        let answer: Value = http
            .post(format!("{}/api/generate", instances[turn].base()))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let made = task_ids(&answer);
        through[turn] += made.len();
        ids.extend(made);
        turn = (turn + 1) % INSTANCES;
    }

    // Instance B dies mid-run and comes back at once on the same port.
    while sim.sim.stats().created < (TASKS / 3) as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            sim.sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = started.elapsed();
    instances[1].process.0.kill().unwrap(); // SIGKILL
    let _ = instances[1].process.0.wait();
    (instances[1].process, instances[1].log) = Instance::start(&instances[1].env);
    instances[1].wait_up(&http).await;

    let deadline = Instant::now() + Duration::from_secs(120);
    let tasks = loop {
        let tasks = list_tasks(&http, &instances[2].base()).await;
        let done = tasks
            .values()
            .filter(|t| matches!(t["state"].as_str(), Some("succeeded" | "failed")))
            .count();
        if done == TASKS || Instant::now() > deadline {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    // The last events reach A's stream shortly after the rows change (later on a loaded
    // machine): the stream is read until it carried every end, for at most 20 s more.
    let finals_on_a = match tokio::time::timeout(Duration::from_secs(20), &mut follower).await {
        Ok(finals) => finals.unwrap(),
        Err(_) => {
            stop.cancel();
            follower.await.unwrap()
        }
    };
    let stats = sim.sim.stats();

    let mut creates: HashMap<String, usize> = HashMap::new();
    for sim_task in sim.sim.task_ids() {
        let url = sim.sim.callback_url(&sim_task).expect("a callback URL");
        let path = url.split('?').next().unwrap();
        *creates
            .entry(path.rsplit('/').next().unwrap().to_owned())
            .or_default() += 1;
    }
    let blobs = {
        let env: HashMap<String, String> = s3_env(&bucket)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let config = darkroom::config::Config::from_env(&env).unwrap();
        darkroom::storage::BlobStore::from_config(
            &config,
            url::Url::parse("http://127.0.0.1/").unwrap(),
        )
        .unwrap()
    };
    let mut stored: HashMap<String, usize> = HashMap::new();
    for key in blobs.list("generated").await.unwrap() {
        let task = darkroom::storage::keys::task_of_generated(&key).expect("a result key");
        *stored.entry(task.to_string()).or_default() += 1;
    }

    let mut states: HashMap<&str, usize> = HashMap::new();
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    let mut problems = Vec::new();
    for id in &ids {
        let Some(task) = tasks.get(id) else {
            problems.push(format!("{id}: lost"));
            continue;
        };
        let state = task["state"].as_str().unwrap_or("?");
        *states.entry(state).or_default() += 1;
        let made = creates.get(id).copied().unwrap_or(0);
        if made > 1 {
            problems.push(format!("{id}: created {made} times"));
        }
        match state {
            "succeeded" => {
                if made != 1 {
                    problems.push(format!("{id}: succeeded with {made} creates"));
                }
                if stored.get(id).copied().unwrap_or(0) != 1 {
                    problems.push(format!("{id}: {:?} stored results", stored.get(id)));
                }
            }
            "failed" => match task["error"]["code"].as_str() {
                Some(code) => *reasons.entry(code).or_default() += 1,
                None => problems.push(format!("{id}: failed without a reason: {task}")),
            },
            other => problems.push(format!("{id}: ended {other}")),
        }
        if !finals_on_a.contains(id) {
            problems.push(format!("{id}: its end never reached A's stream ({state})"));
        }
    }
    println!(
        "cluster: {TASKS} tasks through {INSTANCES} instances on PostgreSQL + S3 ({through:?} per instance), \
         instance B SIGKILLed at {:.1} s and restarted; all final after {:.1} s: {states:?}, failure reasons {reasons:?}; \
         simulator: {} creates, {} rate limited, busiest {WINDOW_SECS} s window {} (limit {CREATES}), double creates {}; \
         callbacks sent {} (failed {}); A's SSE stream carried the end of {} tasks; problems: {}",
        killed_at.as_secs_f64(),
        elapsed.as_secs_f64(),
        stats.created,
        stats.rate_limited,
        stats.max_creates_in_window,
        stats.duplicate_creates,
        stats.callbacks_sent,
        stats.callback_failures,
        finals_on_a.len(),
        problems.len(),
    );
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    assert!(
        stats.max_creates_in_window <= u64::from(CREATES),
        "{stats:?}"
    );
    assert_eq!(stats.duplicate_creates, 0, "{stats:?}");
}
