//! R3: darkroom killed with SIGKILL at seeded random moments while 500 tasks are in flight,
//! and restarted on the same data, against a KIE simulator that outlives it (in this test's
//! process, so its record of every create can be read).
//!
//! What the design guarantees, and what is checked task by task:
//! - every task ends succeeded, or failed with a reason;
//! - no task is created twice at the provider: a create whose answer went down with the
//!   process is settled by waiting for its callback (`DARKROOM_UNCONFIRMED_WINDOW_SECS`),
//!   never by submitting again;
//! - every succeeded task was created exactly once, and its provider id is that create's;
//! - the only failures are those kills explain: `submit_unconfirmed`, for tasks that were
//!   being created (`submitting`, read from the database between the kill and the restart)
//!   at a kill moment; those that reached the provider lost their callback to the dead
//!   process (the simulator counts callbacks that failed);
//! - the bucket holds exactly one result per succeeded task.

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Running, free_port, spawn_sim, wait_for_http};
use darkroom::domain::TaskState;
use darkroom::providers::sim::KieSimConfig;
use darkroom::storage::{Durability, TaskFilter, TaskRepo, sqlite::SqliteRepo};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const TASKS: usize = 500;
const KILLS: usize = 6;
const DISPATCH_CONCURRENCY: usize = 16;

fn start_darkroom(data: &std::path::Path, port: u16, sim: &str) -> Running {
    let child = Command::new(BIN)
        .arg("serve")
        .current_dir(data)
        .env("DARKROOM_DATA_DIR", data)
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("KIE_API_TOKEN", "crash-token")
        .env("KIE_BASE_URL", format!("http://{sim}"))
        .env("DARKROOM_TRUSTED_FETCH_HOSTS", sim)
        .env("DARKROOM_KIE_CREATES_PER_WINDOW", "0")
        .env("DARKROOM_KIE_QUERIES_PER_SECOND", "0")
        .env("DARKROOM_KIE_MAX_IN_FLIGHT", "0")
        .env(
            "DARKROOM_DISPATCH_CONCURRENCY",
            DISPATCH_CONCURRENCY.to_string(),
        )
        .env("DARKROOM_LEASE_SECS", "3")
        .env("DARKROOM_UNCONFIRMED_WINDOW_SECS", "6")
        .env("DARKROOM_FIRST_POLL_MS", "1000")
        .env("DARKROOM_TICK_MS", "100")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("darkroom starts");
    Running(child)
}

/// The tasks a dead darkroom left mid-create (`submitting`), read from its database.
async fn submitting_at_kill(data: &std::path::Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}", data.join("darkroom.db").display());
    let repo = SqliteRepo::connect(&url, 1, Durability::Normal)
        .await
        .expect("the killed process's database opens");
    let tasks = repo
        .list(&TaskFilter {
            states: vec![TaskState::Submitting],
            limit: TASKS,
            ..TaskFilter::default()
        })
        .await
        .unwrap();
    repo.close().await;
    tasks.into_iter().map(|t| t.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_sigkill_during_500_in_flight_tasks_loses_nothing_and_creates_nothing_twice() {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let data = tempfile::tempdir().unwrap();

    // Inputs come from a server of the test's own, up whatever happens to darkroom.
    let image_url = crate::harness::serve_png().await;

    let sim = spawn_sim(KieSimConfig {
        token: Some("crash-token".to_owned()),
        latency_ms: (200, 1500),
        rate_limit: 0,
        ..KieSimConfig::default()
    })
    .await;
    let sim_addr = sim.addr.to_string();

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut darkroom = start_darkroom(data.path(), port, &sim_addr);
    wait_for_http(&http, &format!("{base}/healthz")).await;

    let started = Instant::now();
    let mut ids: Vec<String> = Vec::with_capacity(TASKS);
    while ids.len() < TASKS {
        let body = json!({"prompt": "crash test", "imageUrls": vec![image_url.clone(); 10]});
        let answer: Value = http
            .post(format!("{base}/api/generate"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.extend(crate::harness::task_ids(&answer));
    }

    // Seeded, and the seed printed: `R3_SEED=<n>` replays the same kill moments.
    let seed: u64 = std::env::var("R3_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("R3: kill moments seeded with R3_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kill_times = Vec::new();
    let mut mid_create: Vec<BTreeSet<String>> = Vec::new();
    for _ in 0..KILLS {
        let pause = rng.random_range(300..2500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        darkroom.0.kill().unwrap(); // SIGKILL
        darkroom.0.wait().unwrap();
        kill_times.push(started.elapsed().as_millis());
        // The database as the kill left it: the creates in flight at that moment.
        mid_create.push(submitting_at_kill(data.path()).await);
        darkroom = start_darkroom(data.path(), port, &sim_addr);
        wait_for_http(&http, &format!("{base}/healthz")).await;
    }

    // Let it finish, then read every task.
    let deadline = Instant::now() + Duration::from_secs(240);
    let tasks = loop {
        let mut tasks: HashMap<String, Value> = HashMap::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{base}/api/tasks?limit=200&cursor={c}"),
                None => format!("{base}/api/tasks?limit=200"),
            };
            let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
            for task in page["tasks"].as_array().unwrap() {
                tasks.insert(task["taskId"].as_str().unwrap().to_owned(), task.clone());
            }
            match page["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        let finished = tasks
            .values()
            .filter(|t| t["state"] == "succeeded" || t["state"] == "failed")
            .count();
        if finished == TASKS || Instant::now() > deadline {
            break tasks;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let elapsed = started.elapsed();
    let stats = sim.sim.stats();

    // Creates per darkroom task, from the simulator's own record: the callback URL of each
    // create names the task (`…/api/callback/{taskId}?token=…`).
    let mut creates: HashMap<String, Vec<String>> = HashMap::new();
    for sim_task in sim.sim.task_ids() {
        let url = sim
            .sim
            .callback_url(&sim_task)
            .expect("every create carries a callback URL");
        let path = url.split('?').next().unwrap();
        let task = path.rsplit('/').next().unwrap().to_owned();
        creates.entry(task).or_default().push(sim_task);
    }

    // Objects as the bucket itself lists them. A SIGKILL during a local write leaves
    // object_store's `name#<n>` staging file behind; it is not an object (listings skip it),
    // so it is counted apart, as what the directory holds beyond the listing.
    let bucket_dir = data.path().join("bucket");
    let bucket = darkroom::storage::BlobStore::local(
        &bucket_dir,
        url::Url::parse("http://127.0.0.1/").unwrap(),
    )
    .unwrap();
    let generated = bucket.list("generated").await.unwrap().len();
    let in_directory = std::fs::read_dir(bucket_dir.join("generated"))
        .map(|d| d.count())
        .unwrap_or(0);
    let staging = in_directory - generated;

    let in_flight_at_kills: BTreeSet<&String> = mid_create.iter().flatten().collect();
    let mut states: HashMap<&str, usize> = HashMap::new();
    let mut reasons: HashMap<&str, usize> = HashMap::new();
    let mut failed_created = 0;
    let mut problems = Vec::new();
    for id in &ids {
        let Some(task) = tasks.get(id) else {
            problems.push(format!("{id}: lost (not listed)"));
            continue;
        };
        let state = task["state"].as_str().unwrap();
        *states.entry(state).or_default() += 1;
        let made = creates.get(id).map_or(&[][..], Vec::as_slice);
        if made.len() > 1 {
            problems.push(format!("{id}: created {} times: {made:?}", made.len()));
        }
        match state {
            "succeeded" => {
                if made.len() != 1 || task["providerTaskId"] != made[0].as_str() {
                    problems.push(format!(
                        "{id}: succeeded as {} but the simulator made {made:?}",
                        task["providerTaskId"]
                    ));
                }
            }
            "failed" => {
                let reason = task["error"]["code"].as_str().unwrap_or("");
                *reasons.entry(reason).or_default() += 1;
                if task["error"]["message"].as_str().is_none_or(str::is_empty) {
                    problems.push(format!("{id}: failed without a sentence: {task}"));
                }
                if reason != "submit_unconfirmed" {
                    problems.push(format!(
                        "{id}: failed for a reason no kill explains: {}",
                        task["error"]
                    ));
                }
                if !in_flight_at_kills.contains(id) {
                    problems.push(format!(
                        "{id}: failed {reason}, but was not being created at any kill"
                    ));
                }
                failed_created += made.len();
            }
            other => problems.push(format!("{id}: not final after the wait: {other}")),
        }
    }
    let succeeded = states.get("succeeded").copied().unwrap_or(0);
    let failed = states.get("failed").copied().unwrap_or(0);
    let mid_create_sizes: Vec<usize> = mid_create.iter().map(BTreeSet::len).collect();
    println!(
        "R3: {TASKS} tasks, {KILLS} SIGKILLs at {kill_times:?} ms, with {mid_create_sizes:?} tasks mid-create \
         ({} distinct; each process has at most {DISPATCH_CONCURRENCY} in flight); after {:.1} s: {states:?}; \
         failure reasons {reasons:?}; failed tasks that had reached the simulator {failed_created} \
         (callbacks that found darkroom down {}); simulator creates {} for {} tasks (most for one task {}, \
         double creates {}); results stored {generated} (and {staging} staging files of writes cut short by a kill)",
        in_flight_at_kills.len(),
        elapsed.as_secs_f64(),
        stats.callback_failures,
        stats.created,
        creates.len(),
        creates.values().map(Vec::len).max().unwrap_or(0),
        stats.duplicate_creates,
    );
    assert!(
        problems.is_empty(),
        "{} tasks broke R3:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(succeeded + failed, TASKS, "every task ended: {states:?}");
    assert_eq!(
        stats.created as usize,
        succeeded + failed_created,
        "every create is a succeeded task's, or a failed one's whose answer a kill cut off"
    );
    assert_eq!(
        stats.duplicate_creates, 0,
        "no callback URL was created twice"
    );
    assert!(
        failed_created as u64 <= stats.callback_failures,
        "a failed task that reached the provider lost its callback to the dead process: \
         {failed_created} such tasks, {} failed callbacks",
        stats.callback_failures
    );
    // Each process has at most DISPATCH_CONCURRENCY creates in flight when it is killed (a
    // kill can also find earlier kills' tasks still `submitting`, their lease not yet run
    // out), so the kills can cut off at most KILLS × DISPATCH_CONCURRENCY creates.
    assert!(
        in_flight_at_kills.len() <= KILLS * DISPATCH_CONCURRENCY,
        "creates in flight stay within the dispatch concurrency: {mid_create_sizes:?}"
    );
    assert_eq!(
        generated, succeeded,
        "exactly one stored result per completed task"
    );
}
