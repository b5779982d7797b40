//! `GET /api/stats` and `GET /api/tasks` at a million tasks, on SQLite and (when a URL is
//! given) on PostgreSQL, with the tasks spread over the last 30 days and again all inside
//! the last 24 hours; then the write cost of the statistics rollup on a task's life.
//!
//!   cargo bench --bench stats -- [tasks=1000000] [rounds=50] [spreads=30d,24h]
//!
//! PostgreSQL runs too when `DARKROOM_BENCH_POSTGRES_URL` (or `DARKROOM_TEST_POSTGRES_URL`)
//! names a server: each run makes a fresh database on it and drops it afterwards.
//! `DARKROOM_BENCH_BACKENDS=postgres` (or `sqlite`) runs one backend only.
//!
//! The tasks are written by bulk SQL (an `INSERT … SELECT` of generated rows; on SQLite the
//! database's own statistics triggers count each finished one as it is stored, as they
//! count a task restored by `darkroom reindex`; on PostgreSQL, where that trigger writes
//! about 1,000 tasks a second, they are loaded with it off and counted by the rollup
//! migration's own backfill): over ten owners, one in ten on Gemini;
//! most succeeded with credits and stage times, one in 50 failed (three codes), one in 97
//! canceled, and those of the last two minutes unfinished (queued, at the provider,
//! running). Then darkroom is started on the database and each request is timed `rounds`
//! times after two to warm up (median and p99, milliseconds): every window of the
//! statistics, and the newest and a deep page of the task listing. Each statistics answer
//! is checked against a direct count of the tasks in its window.
//!
//! Then `darkroom serve` (this build's binary) is started on the same database: the time
//! until it answers `/healthz`, its RSS, and the p99 of status polls of the newest 1,000
//! tasks (from the database, then from the status board).
//!
//! Write cost: 2,000 new tasks walked through their life (five guarded updates each,
//! queued → submitting → submitted → running → ingesting → succeeded) through the
//! repository, with the rollup's triggers (as shipped), without them (the floor), and
//! without them but with the covering index the statistics used to read
//! (`tasks_stats`, dropped by the rollup's migration); rounds alternate, medians of µs per
//! task's life.

use std::time::{Duration, Instant};

use darkroom::domain::TaskState;
use darkroom::storage::{NewTask, Repo, TaskUpdate};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod support;
use support::{build_app, new_task, positional_args, settings};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// Tasks created this close to now are left unfinished.
const UNFINISHED_MS: i64 = 120_000;
/// Tasks walked through their life per configuration and round of the write cost.
const LIVES: usize = 2_000;
const LIFE_ROUNDS: usize = 3;

/// The columns of a generated task, as SQL expressions of `i` (its number) and `c` (its
/// creation time); `{now}` and `{count}` are filled in. The same on both backends but for
/// the id and the lists.
fn generated_columns(now: i64) -> String {
    let unfinished = format!("c > {now} - {UNFINISHED_MS}");
    let state = format!(
        "CASE WHEN {unfinished} THEN CASE i % 3 WHEN 0 THEN 'queued' WHEN 1 THEN 'submitted' ELSE 'running' END
              WHEN i % 50 = 0 THEN 'failed' WHEN i % 97 = 0 THEN 'canceled' ELSE 'succeeded' END"
    );
    let submitted = format!(
        "CASE WHEN i % 97 = 0 AND i % 50 <> 0 THEN NULL
              WHEN {unfinished} AND i % 3 = 0 THEN NULL
              ELSE c + 200 + (i * 7919) % 20000 END"
    );
    let completed = format!(
        "CASE WHEN {unfinished} THEN NULL
              ELSE c + 200 + (i * 7919) % 20000 + 8000 + (i * 104729) % 60000 END"
    );
    format!(
        "{state}, CASE WHEN i % 10 = 3 THEN 'gemini' ELSE 'kie' END,
         'google/nano-banana-edit',
         'bench: a person wearing a red dress walking along a beach at sunset, soft light, 35 mm',
         'uploads/2024/01/02/source-image.png', 'https://bucket.example.com/uploads/2024/01/02/source-image.png',
         '1:1', 'png', 'key' || (i % 10), c, '', c, COALESCE({completed}, c), {submitted}, {completed},
         CASE WHEN {unfinished} OR i % 50 = 0 OR i % 97 = 0 THEN NULL
              WHEN i % 10 = 3 THEN 0 ELSE 4 END,
         CASE WHEN {unfinished} THEN NULL
              WHEN i % 50 = 0 THEN CASE i % 3 WHEN 0 THEN 'provider_failed' WHEN 1 THEN 'input_not_found'
                                   ELSE 'deadline_exceeded' END
              WHEN i % 97 = 0 THEN 'canceled' END"
    )
}

const INSERT_COLUMNS: &str =
    "INSERT INTO tasks (id, input_urls, state, provider, model, prompt, source,
    image_url, aspect_ratio, output_format, owner, run_at, callback_token_hash, created_at,
    updated_at, submitted_at, completed_at, credits, error_code)";

/// The rollup migration's backfill on PostgreSQL (its statements between "The tasks
/// already stored" and the index change that follows): the rollup rows of every finished
/// task already in the table.
fn postgres_backfill() -> Vec<&'static str> {
    const MIGRATION: &str = include_str!("../migrations/postgres/0005_stats_rollup.sql");
    let (_, rest) = MIGRATION
        .split_once("-- The tasks already stored.")
        .expect("the migration's backfill");
    let (backfill, _) = rest
        .split_once("-- The rollup answers")
        .expect("the end of the migration's backfill");
    let backfill = backfill.split_once('\n').map_or(backfill, |(_, sql)| sql);
    backfill
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The database behind one run, reached directly (beside darkroom's own pool).
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    /// Runs a statement once (not kept prepared: most are schema changes).
    async fn execute(&self, sql: &str) {
        let query = || sqlx::AssertSqlSafe(sql.to_owned());
        let result = match self {
            Self::Sqlite(pool) => sqlx::query(query())
                .persistent(false)
                .execute(pool)
                .await
                .map(drop),
            Self::Postgres(pool) => sqlx::query(query())
                .persistent(false)
                .execute(pool)
                .await
                .map(drop),
        };
        if let Err(e) = result {
            panic!("{e}: {sql}");
        }
    }

    async fn scalar(&self, sql: &str) -> Option<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await.unwrap(),
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_optional(pool).await.unwrap(),
        }
    }

    async fn ids(&self, sql: &str) -> Vec<String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self {
            Self::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            Self::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        }
    }

    /// Writes `count` tasks created evenly over `span` up to `now`, in batches.
    async fn fill(&self, count: usize, now: i64, span: i64) {
        let columns = generated_columns(now);
        let batch = 100_000;
        if let Self::Postgres(_) = self {
            // PostgreSQL's per-row trigger, upserting a dozen rollup rows per task, writes
            // about 1,000 tasks a second here (a rollup row counted many times in one
            // transaction grows a chain of row versions each later count walks): 10⁶ tasks
            // would take the better part of an hour. The rows are loaded without it and
            // counted once, by the rollup migration's own backfill (what an upgrade over
            // stored tasks runs); each answer is still checked against a direct count, and
            // the trigger's cost per write is measured on its own below.
            self.execute("ALTER TABLE tasks DISABLE TRIGGER stats_task_inserted")
                .await;
        }
        for start in (0..count).step_by(batch) {
            let end = (start + batch).min(count);
            let created = format!("{now} - {span} + i * {span} / {count}");
            let sql = match self {
                Self::Sqlite(_) => format!(
                    "WITH RECURSIVE n(i) AS (SELECT {start} UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {end}),
                          g(i, c) AS (SELECT i, {created} FROM n)
                     {INSERT_COLUMNS}
                     SELECT 'tsk_' || printf('%012x%020x', c, i), '[\"https://bucket.example.com/a.png\"]', {columns}
                     FROM g"
                ),
                Self::Postgres(_) => format!(
                    "{INSERT_COLUMNS}
                     SELECT 'tsk_' || lpad(to_hex(c), 12, '0') || lpad(to_hex(i), 20, '0'),
                            ARRAY['https://bucket.example.com/a.png'], {columns}
                     FROM (SELECT i, {created} AS c FROM generate_series({start}::BIGINT, {end}::BIGINT - 1) AS i) AS g"
                ),
            };
            self.execute(&sql).await;
        }
        if let Self::Postgres(_) = self {
            self.execute("ALTER TABLE tasks ENABLE TRIGGER stats_task_inserted")
                .await;
            for statement in postgres_backfill() {
                self.execute(statement).await;
            }
            // As autovacuum would after such a load.
            self.execute("VACUUM ANALYZE tasks").await;
            self.execute("VACUUM ANALYZE stats_counts").await;
            self.execute("VACUUM ANALYZE stats_durations").await;
        }
    }

    /// The rollup's update trigger, as created (to put it back after a run without it).
    async fn trigger_sql(&self) -> String {
        let sql = match self {
            Self::Sqlite(_) => {
                "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'stats_task_finished'"
            }
            Self::Postgres(_) => {
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'stats_task_finished'"
            }
        };
        self.scalar(sql).await.expect("the rollup's trigger")
    }

    async fn drop_trigger(&self) {
        let sql = match self {
            Self::Sqlite(_) => "DROP TRIGGER stats_task_finished",
            Self::Postgres(_) => "DROP TRIGGER stats_task_finished ON tasks",
        };
        self.execute(sql).await;
    }
}

/// Times `rounds` GETs of `url`, after two to warm up; sorted.
async fn time_get(http: &reqwest::Client, url: &str, rounds: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for i in 0..rounds + 2 {
        let started = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await.unwrap();
        if i >= 2 {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile of sorted times, in ms.
fn percentile(times: &[Duration], p: usize) -> f64 {
    let rank = (times.len() * p).div_ceil(100).max(1);
    ms(times[rank - 1])
}

/// One life per task: five guarded updates to `succeeded`; µs per life.
async fn lives(repo: &dyn Repo, tasks: &[NewTask]) -> f64 {
    use TaskState::*;
    let started = Instant::now();
    for (n, task) in tasks.iter().enumerate() {
        let at = task.created_at;
        let steps = [
            (Queued, Submitting),
            (Submitting, Submitted),
            (Submitted, Running),
            (Running, Ingesting),
            (Ingesting, Succeeded),
        ];
        for (from, to) in steps {
            let mut update = TaskUpdate {
                state: Some(to),
                ..TaskUpdate::default()
            };
            match to {
                Submitted => update.submitted_at = Some(at + 300 + n as i64 % 5_000),
                Succeeded => {
                    update.completed_at = Some(at + 20_000 + n as i64 % 40_000);
                    update.credits = Some(4);
                    update.release_lease = true;
                }
                _ => {}
            }
            let moved = repo
                .update(&task.id, from, None, &update, at)
                .await
                .unwrap();
            assert!(moved.is_some(), "{} {from} → {to}", task.id);
        }
    }
    started.elapsed().as_secs_f64() * 1e6 / tasks.len() as f64
}

/// µs per task's life with the rollup (as shipped), without it, and without it but with
/// the old covering index; medians over alternating rounds.
async fn write_cost(repo: &dyn Repo, db: &Db, now: i64) -> [f64; 3] {
    let trigger = db.trigger_sql().await;
    let mut results: [Vec<f64>; 3] = Default::default();
    for round in 0..LIFE_ROUNDS {
        for (config, result) in results.iter_mut().enumerate() {
            let tasks: Vec<NewTask> = (0..LIVES)
                .map(|i| {
                    let mut t = new_task(now - 60_000 + (round * 3 + config) as i64 * 1000);
                    t.owner = Some(format!("key{}", i % 10));
                    t
                })
                .collect();
            repo.insert(&tasks).await.unwrap();
            if config > 0 {
                db.drop_trigger().await;
            }
            if config == 2 {
                db.execute("CREATE INDEX tasks_stats ON tasks (created_at, state, provider, error_code, credits, submitted_at, completed_at, owner)").await;
            }
            result.push(lives(repo, &tasks).await);
            if config == 2 {
                db.execute("DROP INDEX tasks_stats").await;
            }
            if config > 0 {
                db.execute(&trigger).await;
            }
        }
    }
    results.map(|mut r| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    })
}

/// What `darkroom serve` (this build's binary) does on the filled database: how long it
/// takes to answer `/healthz`, its RSS a second later, and the p99 of status polls for the
/// newest 1,000 tasks, asked one at a time: first from the database (the board is empty
/// after a start), then again from the board.
struct Served {
    start: Duration,
    rss_kib: u64,
    cold_p99_ms: f64,
    warm_p99_ms: f64,
}

async fn serve_process(url: &str, dir: &std::path::Path, db: &Db) -> Served {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_darkroom"))
        .arg("serve")
        .env("DARKROOM_DATABASE_URL", url)
        .env("DARKROOM_DATA_DIR", dir)
        .env("DARKROOM_LISTEN", format!("127.0.0.1:{port}"))
        .env("DARKROOM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("darkroom serve starts");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    loop {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "darkroom serve did not answer /healthz within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let newest = db
        .ids("SELECT id FROM tasks ORDER BY created_at DESC LIMIT 1000")
        .await;
    let mut passes = Vec::new();
    for _ in 0..2 {
        let mut times = Vec::with_capacity(newest.len());
        for id in &newest {
            let asked = Instant::now();
            let answer = http
                .get(format!("{base}/api/task-status?taskId={id}"))
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{id}: {}", answer.status());
            answer.bytes().await.unwrap();
            times.push(asked.elapsed());
        }
        times.sort();
        passes.push(percentile(&times, 99));
    }
    let _ = child.kill();
    let _ = child.wait();
    Served {
        start,
        rss_kib,
        cold_p99_ms: passes[0],
        warm_p99_ms: passes[1],
    }
}

/// One backend, one spread: fill, serve, time, check; the write cost after.
async fn run(
    backend: &str,
    url: &str,
    dir: &std::path::Path,
    count: usize,
    rounds: usize,
    spread: &str,
) {
    let span = if spread == "24h" { DAY_MS } else { 30 * DAY_MS };
    let app = build_app(settings([
        ("DARKROOM_DATA_DIR", dir.display().to_string()),
        ("DARKROOM_DATABASE_URL", url.to_owned()),
    ]))
    .await;
    let db = if backend == "sqlite" {
        // One connection: its schema changes (the trigger dropped and made again) are seen
        // by its next statement without a second connection's cached schema in between.
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap();
        Db::Sqlite(pool)
    } else {
        Db::Postgres(sqlx::PgPool::connect(url).await.unwrap())
    };
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    db.fill(count, now, span).await;
    let filled = started.elapsed();
    let mut rollup = Vec::new();
    for grain in [300_000, 3_600_000, 86_400_000] {
        let rows = db
            .count(&format!(
                "SELECT (SELECT COUNT(*) FROM stats_counts WHERE grain_ms = {grain})
                      + (SELECT COUNT(*) FROM stats_durations WHERE grain_ms = {grain})"
            ))
            .await;
        rollup.push(rows.to_string());
    }
    println!(
        "\n### {backend}, {count} tasks over the last {spread}\n\nwritten in {:.1} s; the rollup's rows (5-minute, hourly, daily): {}\n",
        filled.as_secs_f64(),
        rollup.join(", ")
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let repo = app.state.repo.clone();
    let served = tokio::spawn(app.serve(listener, shutdown.clone()));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    println!("| request | tasks in window | median ms | p99 ms |");
    println!("|---|---|---|---|");
    let (mut stats_p99, mut tasks_p99) = (0f64, 0f64);
    for window in ["1h", "24h", "7d", "30d"] {
        let url = format!("{base}/api/stats?window={window}");
        let answer: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let since = chrono::DateTime::parse_from_rfc3339(answer["since"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let direct = db
            .count(&format!(
                "SELECT COUNT(*) FROM tasks WHERE created_at >= {since}"
            ))
            .await;
        assert_eq!(
            answer["tasks"], direct,
            "{window}: the answer counts every task"
        );
        let times = time_get(&http, &url, rounds).await;
        stats_p99 = stats_p99.max(percentile(&times, 99));
        println!(
            "| `GET /api/stats?window={window}` | {direct} | {:.2} | {:.2} |",
            percentile(&times, 50),
            percentile(&times, 99)
        );
    }
    let deep = db
        .scalar(&format!(
            "SELECT id FROM tasks ORDER BY id LIMIT 1 OFFSET {}",
            count / 100
        ))
        .await
        .unwrap();
    for (what, path) in [
        (
            "`GET /api/tasks?limit=50` (newest)",
            "/api/tasks?limit=50".to_owned(),
        ),
        (
            "`GET /api/tasks?limit=50&cursor=…` (deep: the oldest 1 %)",
            format!("/api/tasks?limit=50&cursor={deep}"),
        ),
    ] {
        let times = time_get(&http, &format!("{base}{path}"), rounds).await;
        tasks_p99 = tasks_p99.max(percentile(&times, 99));
        println!(
            "| {what} | — | {:.2} | {:.2} |",
            percentile(&times, 50),
            percentile(&times, 99)
        );
    }
    shutdown.cancel();
    let _ = served.await;
    let process = serve_process(url, dir, &db).await;
    println!(
        "\n`darkroom serve` on these {count} tasks: answered /healthz {:.2} s after it was started, RSS {:.1} MiB a second later; \
         status polls of the newest 1,000 tasks one at a time: p99 {:.2} ms from the database, {:.2} ms from the board",
        process.start.as_secs_f64(),
        process.rss_kib as f64 / 1024.0,
        process.cold_p99_ms,
        process.warm_p99_ms
    );
    // For bench/all.sh: the slowest p99 of each kind of request, and the process's figures.
    println!(
        "\nSUMMARY backend={backend} spread={spread} tasks={count} stats_p99_ms={stats_p99:.2} tasks_page_p99_ms={tasks_p99:.2} \
         start_s={:.2} start_rss_mib={:.1} status_cold_p99_ms={:.2} status_warm_p99_ms={:.2}",
        process.start.as_secs_f64(),
        process.rss_kib as f64 / 1024.0,
        process.cold_p99_ms,
        process.warm_p99_ms
    );

    if spread == "30d" {
        let [rollup, floor, old_index] = write_cost(repo.as_ref(), &db, now).await;
        println!(
            "\nwrite cost per task's life (5 guarded updates, {LIVES} tasks × {LIFE_ROUNDS} rounds, medians):\n\n\
             | configuration | µs per life | vs. no rollup |\n|---|---|---|\n\
             | rollup triggers (shipped) | {rollup:.0} | {:+.0} µs |\n\
             | neither (floor) | {floor:.0} | — |\n\
             | old `tasks_stats` index, no rollup (before) | {old_index:.0} | {:+.0} µs |",
            rollup - floor,
            old_index - floor
        );
    }
}

#[tokio::main]
async fn main() {
    let args = positional_args();
    let count: usize = args.first().map_or(1_000_000, |a| a.parse().unwrap());
    let rounds: usize = args.get(1).map_or(50, |a| a.parse().unwrap());
    let spreads: Vec<String> = args
        .get(2)
        .map_or("30d,24h", String::as_str)
        .split(',')
        .map(str::to_owned)
        .collect();
    let postgres = std::env::var("DARKROOM_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("DARKROOM_TEST_POSTGRES_URL"))
        .ok();
    // DARKROOM_BENCH_BACKENDS=postgres (or sqlite) runs one backend only.
    let backends =
        std::env::var("DARKROOM_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".to_owned());
    for spread in spreads.iter().filter(|_| backends.contains("sqlite")) {
        let temp = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", temp.path().join("darkroom.db").display());
        run("sqlite", &url, temp.path(), count, rounds, spread).await;
    }
    let postgres = postgres.filter(|_| backends.contains("postgres"));
    let Some(server) = postgres else {
        println!("\n(PostgreSQL skipped: DARKROOM_BENCH_POSTGRES_URL is not set)");
        return;
    };
    let admin = sqlx::PgPool::connect(&server).await.unwrap();
    for spread in &spreads {
        let name = format!("darkroom_bench_{}_{spread}", chrono::Utc::now().timestamp());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        // The same server, another database: the URL's path is the database's name.
        let (server_part, _) = server.rsplit_once('/').expect("a database URL");
        let url = format!("{server_part}/{name}");
        let temp = tempfile::tempdir().unwrap();
        run("postgres", &url, temp.path(), count, rounds, spread).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await
        .unwrap();
    }
}
