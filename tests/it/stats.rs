//! `GET /api/stats` after a scripted run through the built-in simulators: successes, inputs
//! that cannot work (`input_not_found`, `input_not_image`), a retry of one of them that fails
//! again, a prompt Gemini blocks (`prompt_blocked`) and a canceled task. Every figure is checked against what the run did
//! (the task rows themselves, read from the repository): with API keys on (each key its
//! own tasks, an administrator key all of them with a row per key) and off (everything,
//! the same after a restart), on SQLite and on PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use darkroom::domain::TaskState;
use darkroom::domain::stats::duration_bucket;
use darkroom::storage::Task;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::harness::{TestApp, fresh_postgres, input_host, spawn_app_env, task_ids};

const ALICE: &str = "dk_stats_alice_0123456789abcdef";
const BOB: &str = "dk_stats_bob_0123456789abcdefgh";
const OPS: &str = "dk_stats_ops_0123456789abcdefgh";
const FINAL: Duration = Duration::from_secs(60);

/// What one key (or, with keys off, the one client) ran.
struct Run {
    ids: Vec<String>,
}

fn env(host: &str, keys: bool, database: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("DARKROOM_WORKERS", "false".to_owned()),
        ("DARKROOM_TRUSTED_FETCH_HOSTS", host.to_owned()),
        ("DARKROOM_CHECK_CLIENT_INPUTS", "true".to_owned()),
        ("DARKROOM_GEMINI_SIM_BLOCK_RATE", "1".to_owned()),
    ];
    if keys {
        env.push((
            "DARKROOM_API_KEYS",
            format!("alice:{ALICE},bob:{BOB},ops:{OPS}"),
        ));
        env.push(("DARKROOM_ADMIN_KEYS", "ops".to_owned()));
    }
    if let Some(url) = database {
        env.push(("DARKROOM_DATABASE_URL", url.to_owned()));
    }
    env
}

async fn generate(app: &TestApp, key: Option<&str>, body: Value) -> Vec<String> {
    let (status, answer) = app
        .send(Method::POST, "/api/generate", key, Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    task_ids(&answer)
}

/// Alice's part: three successes, two inputs that are not there, one that is no image.
async fn alice_runs(app: &TestApp, key: Option<&str>, host: &str) -> Run {
    let input = format!("http://{host}/input.png");
    let mut ids = generate(
        app,
        key,
        json!({"prompt": "p", "imageUrls": [input, input, input]}),
    )
    .await;
    let missing = format!("http://{host}/missing.png");
    ids.extend(
        generate(
            app,
            key,
            json!({"prompt": "p", "imageUrls": [missing, missing]}),
        )
        .await,
    );
    let page = format!("http://{host}/page.png");
    ids.extend(generate(app, key, json!({"prompt": "p", "imageUrls": [page]})).await);
    Run { ids }
}

/// Bob's part: a prompt Gemini blocks, one KIE success, one task canceled while queued.
async fn bob_runs(app: &TestApp, key: Option<&str>, host: &str) -> Run {
    let input = format!("http://{host}/input.png");
    let mut ids = generate(
        app,
        key,
        json!({"prompt": "p", "provider": "gemini", "imageUrls": [input]}),
    )
    .await;
    ids.extend(generate(app, key, json!({"prompt": "p", "imageUrls": [input]})).await);
    let canceled = generate(app, key, json!({"prompt": "p", "imageUrls": [input]})).await;
    let (status, answer) = app
        .send(
            Method::POST,
            &format!("/api/tasks/{}/cancel", canceled[0]),
            key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    ids.extend(canceled);
    Run { ids }
}

async fn stats(app: &TestApp, key: Option<&str>, window: &str) -> Value {
    let (status, body) = app
        .send(
            Method::GET,
            &format!("/api/stats?window={window}"),
            key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The nearest-rank percentile, as the API documents it: the upper bound of the histogram
/// bucket the exact value counts in.
fn nearest_rank(sorted: &[i64], p: usize) -> i64 {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    duration_bucket(sorted[rank - 1])
}

fn percentiles(mut durations: Vec<i64>) -> Value {
    if durations.is_empty() {
        return Value::Null;
    }
    durations.sort_unstable();
    json!({
        "count": durations.len(),
        "p50Ms": nearest_rank(&durations, 50),
        "p95Ms": nearest_rank(&durations, 95),
        "p99Ms": nearest_rank(&durations, 99),
    })
}

fn is_failure(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Failed | TaskState::Canceled | TaskState::Expired
    )
}

/// Checks an answer's figures against the task rows it should count.
fn check_figures(answer: &Value, tasks: &[&Task], context: &str) {
    let succeeded: Vec<&&Task> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Succeeded)
        .collect();
    let failed = tasks.iter().filter(|t| is_failure(t.state)).count();
    assert_eq!(answer["tasks"], tasks.len(), "{context}: {answer}");
    assert_eq!(answer["succeeded"], succeeded.len(), "{context}: {answer}");
    assert_eq!(answer["failed"], failed, "{context}: {answer}");
    assert_eq!(answer["finished"], succeeded.len() + failed, "{context}");
    let rate = answer["successRate"].as_f64().unwrap();
    assert!(
        (rate - succeeded.len() as f64 / (succeeded.len() + failed) as f64).abs() < 1e-9,
        "{context}: {answer}"
    );
    let credits: i64 = tasks.iter().filter_map(|t| t.credits).sum();
    assert_eq!(answer["credits"], credits, "{context}: {answer}");
    let mut states: BTreeMap<String, usize> = TaskState::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        *states.get_mut(t.state.as_str()).unwrap() += 1;
        if is_failure(t.state) {
            *codes.entry(t.error_code.clone().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(answer["states"], json!(states), "{context}");
    let failures: BTreeMap<String, usize> = answer["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["code"].as_str().unwrap().to_owned(),
                f["count"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(failures, codes, "{context}: {answer}");
    let queue: Vec<i64> = tasks
        .iter()
        .filter_map(|t| Some(t.submitted_at? - t.created_at))
        .collect();
    let provider: Vec<i64> = succeeded
        .iter()
        .map(|t| t.completed_at.unwrap() - t.submitted_at.unwrap())
        .collect();
    let end_to_end: Vec<i64> = succeeded
        .iter()
        .map(|t| t.completed_at.unwrap() - t.created_at)
        .collect();
    assert_eq!(
        answer["durations"],
        json!({"queue": percentiles(queue), "provider": percentiles(provider),
               "endToEnd": percentiles(end_to_end)}),
        "{context}"
    );
    let mut providers: BTreeMap<String, (usize, usize, usize, i64)> = BTreeMap::new();
    for t in tasks {
        let p = providers.entry(t.provider.clone()).or_default();
        p.0 += 1;
        p.1 += usize::from(t.state == TaskState::Succeeded);
        p.2 += usize::from(is_failure(t.state));
        p.3 += t.credits.unwrap_or(0);
    }
    let answered: BTreeMap<String, (usize, usize, usize, i64)> = answer["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let n = |f: &str| p[f].as_u64().unwrap() as usize;
            (
                p["provider"].as_str().unwrap().to_owned(),
                (
                    n("tasks"),
                    n("succeeded"),
                    n("failed"),
                    p["credits"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(answered, providers, "{context}");
    let series = answer["series"].as_array().unwrap();
    let sum = |f: &str| series.iter().map(|b| b[f].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("tasks"), tasks.len() as i64, "{context}");
    assert_eq!(sum("credits"), credits, "{context}");
    assert_eq!(sum("succeeded"), succeeded.len() as i64, "{context}");
    assert_eq!(sum("failed"), failed as i64, "{context}");
    let width = answer["bucketSecs"].as_i64().unwrap() * 1000;
    for bucket in series {
        let start = chrono::DateTime::parse_from_rfc3339(bucket["start"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let inside = tasks
            .iter()
            .filter(|t| (start..start + width).contains(&t.created_at))
            .count();
        assert_eq!(bucket["tasks"], inside, "{context}: {bucket}");
    }
}

async fn rows(app: &TestApp, ids: &[String]) -> Vec<Task> {
    app.step_until_final(ids, FINAL).await
}

/// Retries the run's first failed task (`POST /api/tasks/{id}/retry`: a new task; its input
/// is still missing, so it fails again) and steps it to its end: the run's rows with it.
async fn with_a_retry(app: &TestApp, key: Option<&str>, mut run: Run) -> Vec<Task> {
    let done = rows(app, &run.ids).await;
    let failed = done
        .iter()
        .find(|t| t.error_code.as_deref() == Some("input_not_found"))
        .expect("a task whose input is missing");
    let (status, answer) = app
        .send(
            Method::POST,
            &format!("/api/tasks/{}/retry", failed.id),
            key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["retryOf"], failed.id.as_str(), "{answer}");
    run.ids.push(answer["taskId"].as_str().unwrap().to_owned());
    let all = rows(app, &run.ids).await;
    assert_eq!(all.last().unwrap().state, TaskState::Failed, "{all:?}");
    all
}

/// The whole scripted run with API keys on: Alice and Bob see their own, `ops` (an
/// administrator) sees both and a row per key, a request without a key is refused.
async fn keyed_run(database: Option<&str>) {
    let stop = CancellationToken::new();
    let host = input_host(stop.clone()).await;
    let app = spawn_app_env(&env(&host, true, database)).await;
    let alice = alice_runs(&app, Some(ALICE), &host).await;
    let bob = bob_runs(&app, Some(BOB), &host).await;
    let alice_rows = with_a_retry(&app, Some(ALICE), alice).await;
    let bob_rows = rows(&app, &bob.ids).await;
    assert!(
        alice_rows
            .iter()
            .chain(&bob_rows)
            .any(|t| t.credits.unwrap_or(0) > 0),
        "the simulator charges credits: {alice_rows:?}"
    );

    let mine = stats(&app, Some(ALICE), "24h").await;
    assert_eq!(mine["scope"], "key");
    assert_eq!(mine["key"], "alice");
    assert!(
        mine.get("perKey").is_none(),
        "a key sees no other key: {mine}"
    );
    check_figures(&mine, &alice_rows.iter().collect::<Vec<_>>(), "alice");
    let bobs = stats(&app, Some(BOB), "1h").await;
    check_figures(&bobs, &bob_rows.iter().collect::<Vec<_>>(), "bob");

    let all_rows: Vec<&Task> = alice_rows.iter().chain(&bob_rows).collect();
    for window in ["1h", "24h", "7d", "30d"] {
        let admin = stats(&app, Some(OPS), window).await;
        assert_eq!(admin["scope"], "admin");
        assert_eq!(admin["window"], window);
        check_figures(&admin, &all_rows, &format!("ops, {window}"));
        let keys: Vec<(Value, Value, Value, Value)> = admin["perKey"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["key"].clone(),
                    k["tasks"].clone(),
                    k["succeeded"].clone(),
                    k["failed"].clone(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                (json!("alice"), json!(7), json!(3), json!(4)),
                (json!("bob"), json!(3), json!(1), json!(2)),
            ],
            "{admin}"
        );
    }
    let (status, body) = app.send(Method::GET, "/api/stats", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = app
        .send(Method::GET, "/api/stats?window=2h", Some(ALICE), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_window", "{body}");
    stop.cancel();
}

#[tokio::test]
async fn each_key_sees_its_own_figures_and_an_administrator_sees_every_key() {
    keyed_run(None).await;
}

#[tokio::test]
async fn the_figures_are_the_same_on_postgres() {
    let db = fresh_postgres().await;
    keyed_run(Some(&db.url)).await;
}

/// With API keys off everything is everyone's: one view of every task, a row for "no key",
/// the same after a restart (the figures come from the database). The series of the last
/// hour is 5-minute buckets with the run in the current one.
#[tokio::test]
async fn without_keys_everything_is_counted_and_survives_a_restart() {
    let stop = CancellationToken::new();
    let host = input_host(stop.clone()).await;
    let settings = env(&host, false, None);
    let app = spawn_app_env(&settings).await;
    let mut ids = alice_runs(&app, None, &host).await.ids;
    ids.extend(bob_runs(&app, None, &host).await.ids);
    let all = rows(&app, &ids).await;
    let answer = stats(&app, None, "1h").await;
    assert_eq!(answer["scope"], "all");
    assert_eq!(answer["key"], Value::Null);
    check_figures(&answer, &all.iter().collect::<Vec<_>>(), "keys off");
    assert_eq!(answer["perKey"][0]["key"], Value::Null, "{answer}");
    assert_eq!(answer["perKey"][0]["tasks"], 9, "{answer}");
    assert_eq!(answer["bucketSecs"], 300);
    let series = answer["series"].as_array().unwrap();
    assert!((12..=13).contains(&series.len()), "{answer}");
    let day = stats(&app, None, "24h").await;
    assert_eq!(day["bucketSecs"], 3600);
    assert_eq!(day["series"].as_array().unwrap().len(), 25, "{day}");

    let overrides: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = app.restart(&overrides).await;
    let again = stats(&app, None, "1h").await;
    let figures = |v: &Value| {
        let mut v = v.clone();
        for moving in ["since", "until", "series"] {
            v.as_object_mut().unwrap().remove(moving);
        }
        v
    };
    assert_eq!(figures(&again), figures(&answer), "after a restart");
    stop.cancel();
}
