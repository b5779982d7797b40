//! Daily credit budgets (issue 13): a key's budget reached in the middle of its tasks holds
//! the rest back before any create is sent (they wait with `budget_exhausted` and a
//! sentence saying which budget and when it resets; the simulator sees no create beyond
//! the budget; other keys go on), the create slots they had taken are given back, and
//! raising the budget with `darkroom keys budget` sends them at once; the global budget
//! with the `fail` policy fails what it cannot pay for. `/api/stats` and `/metrics` show
//! budgets and spend. The repository's side is the contract suite
//! (`storage::contract::budgets`, on SQLite and PostgreSQL in `queue`).

use std::time::{Duration, Instant};
use tokio::process::Command;

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::{BIN, TestApp, quick_sim, serve_png, spawn_app_env, spawn_sim, task_ids};

const ALICE: &str = "dk_budget_alice_0123456789abcdef";
const BOB: &str = "dk_budget_bob_0123456789abcdefgh";
/// What the simulator bills per image, and darkroom's default KIE estimate.
const CREDITS: i64 = 4;

/// Runs `darkroom ARGS` on the app's database; its standard output. Awaited, not waited
/// for blocking: the app runs on the test's runtime and must go on while the command runs.
async fn cli(app: &TestApp, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(args)
        .env("DARKROOM_DATA_DIR", app.dir.path())
        .env("DARKROOM_LOG", "warn")
        .current_dir(app.dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "darkroom {args:?}: {stderr}");
    stdout
}

async fn generate(app: &TestApp, key: &str, input: &str, n: usize) -> Vec<String> {
    let body = json!({"prompt": "budgets", "imageUrls": vec![input; n]});
    let (status, answer) = app
        .send(Method::POST, "/api/generate", Some(key), Some(&body))
        .await;
    assert_eq!(status, 200, "{answer}");
    task_ids(&answer)
}

async fn tasks(app: &TestApp, key: &str, ids: &[String]) -> Vec<Value> {
    let mut all = Vec::with_capacity(ids.len());
    for id in ids {
        let (status, task) = app
            .send(Method::GET, &format!("/api/tasks/{id}"), Some(key), None)
            .await;
        assert_eq!(status, 200, "{task}");
        all.push(task);
    }
    all
}

/// Polls the tasks until `done` holds for them, failing after `timeout`.
async fn wait_tasks(
    app: &TestApp,
    key: &str,
    ids: &[String],
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let all = tasks(app, key, ids).await;
        if done(&all) {
            return all;
        }
        assert!(start.elapsed() < timeout, "not as expected: {all:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(tasks: &[Value], state: &str) -> usize {
    tasks.iter().filter(|t| t["state"] == state).count()
}

/// Creates counted in KIE's window, as the database holds them.
async fn window_slots(app: &TestApp) -> i64 {
    let db = app.dir.path().join("darkroom.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(slots), 0) FROM provider_creates WHERE provider = 'kie'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics"))
}

#[tokio::test]
async fn a_key_budget_reached_mid_batch_holds_the_rest_until_it_is_raised() {
    let sim = spawn_sim(quick_sim()).await;
    let input = serve_png().await;
    let mut env = sim.kie_env();
    env.extend([
        ("DARKROOM_API_KEYS", format!("alice:{ALICE},bob:{BOB}")),
        // A create window that outlasts the test: the slots the held tasks took are seen
        // to be given back.
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "20".to_owned()),
        ("DARKROOM_KIE_CREATE_WINDOW_SECS", "600".to_owned()),
        ("DARKROOM_KIE_QUERIES_PER_SECOND", "0".to_owned()),
    ]);
    let app = spawn_app_env(&env).await;
    let set = cli(&app, &["keys", "budget", "alice", "--daily-credits", "12"]).await;
    assert!(set.contains("12 credits per UTC day"), "{set}");

    // Alice's six tasks cost 24 credits against her 12; Bob has no budget of his own.
    let alice = generate(&app, ALICE, &input, 6).await;
    let bob = generate(&app, BOB, &input, 2).await;
    let bobs = wait_tasks(&app, BOB, &bob, Duration::from_secs(30), |all| {
        count(all, "succeeded") == 2
    })
    .await;
    assert_eq!(count(&bobs, "succeeded"), 2);
    let held = wait_tasks(&app, ALICE, &alice, Duration::from_secs(30), |all| {
        count(all, "succeeded") == 3
            && all
                .iter()
                .filter(|t| t["state"] == "queued")
                .all(|t| t["error"]["code"] == "budget_exhausted")
            && count(all, "queued") == 3
    })
    .await;
    let waiting = held.iter().find(|t| t["state"] == "queued").unwrap();
    let message = waiting["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("the daily credit budget of key \"alice\" (12 credits) is spent")
            && message.contains("it resets at ")
            && message.contains("T00:00:00.000Z"),
        "{message}"
    );
    let stats = sim.sim.stats();
    assert_eq!(stats.created, 5, "no create beyond the budget: {stats:?}");
    assert_eq!(
        window_slots(&app).await,
        5,
        "the held tasks' create slots were given back"
    );

    // The figures: a key sees its own budget, and the global spend.
    let (status, own) = app
        .send(Method::GET, "/api/stats?window=1h", Some(ALICE), None)
        .await;
    assert_eq!(status, 200, "{own}");
    let budgets = &own["budgets"];
    assert_eq!(budgets["policy"], "wait", "{budgets}");
    assert_eq!(budgets["global"]["dailyCredits"], Value::Null, "{budgets}");
    assert_eq!(budgets["global"]["spent"], 5 * CREDITS, "{budgets}");
    assert_eq!(
        budgets["keys"],
        json!([{"key": "alice", "dailyCredits": 12, "spent": 12, "remaining": 0}])
    );
    let (_, theirs) = app
        .send(Method::GET, "/api/stats?window=1h", Some(BOB), None)
        .await;
    assert_eq!(
        theirs["budgets"]["keys"],
        json!([{"key": "bob", "dailyCredits": null, "spent": 8, "remaining": null}])
    );
    let response = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(ALICE)
        .send()
        .await
        .unwrap();
    let metrics = response.text().await.unwrap();
    assert!(
        metric(&metrics, "darkroom_budget_refusals_total{scope=\"key\"}") >= 3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "darkroom_budget_spent_credits "),
        (5 * CREDITS) as f64
    );
    assert_eq!(metric(&metrics, "darkroom_budget_keys_exhausted "), 1.0);

    // Raised, the budget lets the waiting tasks go at once (not at midnight).
    let raised = cli(&app, &["keys", "budget", "alice", "--daily-credits", "24"]).await;
    assert!(raised.contains("3 waiting tasks"), "{raised}");
    let done = wait_tasks(&app, ALICE, &alice, Duration::from_secs(30), |all| {
        count(all, "succeeded") == 6
    })
    .await;
    assert!(done.iter().all(|t| t["error"].is_null()), "{done:#?}");
    assert_eq!(sim.sim.stats().created, 8);
    let listed = cli(&app, &["keys", "list"]).await;
    assert!(listed.contains("alice\t24 credits/day"), "{listed}");
    let (_, own) = app
        .send(Method::GET, "/api/stats?window=1h", Some(ALICE), None)
        .await;
    assert_eq!(
        own["budgets"]["keys"],
        json!([{"key": "alice", "dailyCredits": 24, "spent": 24, "remaining": 0}])
    );
}

#[tokio::test]
async fn the_global_budget_with_the_fail_policy_fails_what_it_cannot_pay_for() {
    let sim = spawn_sim(quick_sim()).await;
    let input = serve_png().await;
    let mut env = sim.kie_env();
    env.extend([
        ("DARKROOM_DAILY_CREDIT_BUDGET", "8".to_owned()),
        ("DARKROOM_BUDGET_POLICY", "fail".to_owned()),
        ("DARKROOM_KIE_CREATES_PER_WINDOW", "0".to_owned()),
        ("DARKROOM_KIE_QUERIES_PER_SECOND", "0".to_owned()),
    ]);
    let app = spawn_app_env(&env).await;
    let body = json!({"prompt": "budgets", "imageUrls": vec![input.as_str(); 5]});
    let (status, answer) = app.post_json("/api/generate", &body).await;
    assert_eq!(status, 200, "{answer}");
    let ids = task_ids(&answer);
    let counts = app.wait_all_final(&ids, Duration::from_secs(30)).await;
    assert_eq!(counts.get("completed"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("failed"), Some(&3), "{counts:?}");
    assert_eq!(sim.sim.stats().created, 2, "only what the budget pays for");
    for id in &ids {
        let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
        if task["state"] == "failed" {
            assert_eq!(task["error"]["code"], "budget_exhausted", "{task}");
            let message = task["error"]["message"].as_str().unwrap();
            assert!(
                message.starts_with(
                    "not sent: the global daily credit budget (DARKROOM_DAILY_CREDIT_BUDGET, 8 credits) is spent: 8 counted today"
                ),
                "{message}"
            );
        }
    }
    let (_, stats) = app.get_json("/api/stats?window=1h").await;
    let budgets = &stats["budgets"];
    assert_eq!(budgets["policy"], "fail");
    assert_eq!(
        budgets["global"],
        json!({"dailyCredits": 8, "spent": 8, "remaining": 0})
    );
    assert_eq!(stats["failures"][0]["code"], "budget_exhausted", "{stats}");
}

#[tokio::test]
async fn a_global_budget_raised_over_a_restart_sends_the_waiting_tasks() {
    let sim = spawn_sim(quick_sim()).await;
    let input = serve_png().await;
    let env = |budget: &str| {
        let mut env = sim.kie_env();
        env.extend([
            ("DARKROOM_DAILY_CREDIT_BUDGET", budget.to_owned()),
            ("DARKROOM_KIE_CREATES_PER_WINDOW", "0".to_owned()),
            ("DARKROOM_KIE_QUERIES_PER_SECOND", "0".to_owned()),
        ]);
        env
    };
    let app = spawn_app_env(&env("8")).await;
    let body = json!({"prompt": "budgets", "imageUrls": vec![input.as_str(); 3]});
    let (status, answer) = app.post_json("/api/generate", &body).await;
    assert_eq!(status, 200, "{answer}");
    let ids = task_ids(&answer);
    let mut waiting = None;
    let start = Instant::now();
    while waiting.is_none() {
        let mut done = 0;
        for id in &ids {
            let (_, task) = app.get_json(&format!("/api/tasks/{id}")).await;
            match task["state"].as_str() {
                Some("succeeded") => done += 1,
                Some("queued") if task["error"]["code"] == "budget_exhausted" => {
                    waiting = Some(task);
                }
                _ => {}
            }
        }
        if done < 2 {
            waiting = None;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not held");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = waiting.unwrap();
    assert!(
        waiting["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("waiting: the global daily credit budget (DARKROOM_DAILY_CREDIT_BUDGET, 8 credits) is spent"),
        "{waiting}"
    );
    assert_eq!(sim.sim.stats().created, 2);

    // Restarted with a larger budget, the waiting task goes at once, not at midnight.
    let env = env("12");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = app.restart(&env).await;
    let counts = app.wait_all_final(&ids, Duration::from_secs(30)).await;
    assert_eq!(counts.get("completed"), Some(&3), "{counts:?}");
    assert_eq!(sim.sim.stats().created, 3);
}
