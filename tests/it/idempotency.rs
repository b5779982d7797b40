//! `Idempotency-Key` on `POST /api/generate`, `POST /api/batches` and `POST /api/upload`:
//! a retry with the same key and request replays the first answer (same status, same bytes,
//! `Idempotent-Replayed: true`) and creates nothing — the simulator sees one create per
//! task; another request under the key is a 422; a request while the first still runs is
//! a 409; many at once make one task set; replays survive a restart; owners do not share
//! keys; keys expire; an interrupted request frees its key. The repository's side is the
//! contract suite (`storage::contract::idempotency`, on SQLite and PostgreSQL in `queue`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use darkroom::storage::TaskFilter;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::harness::{TestApp, fresh_postgres, png, spawn_app};

const FINAL: Duration = Duration::from_secs(60);

/// An answer as the client saw it.
struct Answer {
    status: u16,
    replayed: bool,
    retry_after: Option<String>,
    /// The body's bytes, to compare replays byte for byte.
    text: String,
    json: Value,
}

impl Answer {
    async fn of(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let replayed = match header("idempotent-replayed").as_deref() {
            None => false,
            Some("true") => true,
            Some(other) => panic!("Idempotent-Replayed: {other}"),
        };
        let retry_after = header("retry-after");
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            replayed,
            retry_after,
            text,
            json,
        }
    }

    fn task_ids(&self) -> Vec<String> {
        self.json["taskIds"]
            .as_array()
            .unwrap_or_else(|| panic!("no taskIds: {}", self.text))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

async fn post(
    app: &TestApp,
    path: &str,
    api_key: Option<&str>,
    idempotency_key: Option<&[u8]>,
    body: &Value,
) -> Answer {
    let mut request = app.http.post(app.url(path)).json(body);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    if let Some(key) = idempotency_key {
        request = request.header(
            "Idempotency-Key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        );
    }
    Answer::of(request.send().await.unwrap()).await
}

/// Uploads `files` in the `files` field (reqwest draws a new boundary each time).
async fn upload(app: &TestApp, idempotency_key: &str, files: &[(&str, Vec<u8>)]) -> Answer {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    let response = app
        .http
        .post(app.url("/api/upload"))
        .header("Idempotency-Key", idempotency_key)
        .multipart(form)
        .send()
        .await
        .unwrap();
    Answer::of(response).await
}

async fn task_count(app: &TestApp) -> usize {
    app.repo
        .list(&TaskFilter {
            limit: 1000,
            ..TaskFilter::default()
        })
        .await
        .unwrap()
        .len()
}

/// Two image URLs of our own (an upload), for generation bodies.
async fn sources(app: &TestApp) -> Vec<String> {
    let (code, up) = app
        .upload(&[("a.png", png(40, 30)), ("b.png", png(30, 40))])
        .await;
    assert_eq!(code, 200, "{up}");
    up["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["url"].as_str().unwrap().to_owned())
        .collect()
}

/// The same request twice: the second answer is the first, byte for byte, and nothing more
/// is created — for tasks, batches and refusals alike; every task reaches the simulator
/// once.
#[tokio::test]
async fn a_retry_with_the_same_key_replays_the_first_answer_and_creates_nothing() {
    let app = spawn_app(&[]).await;
    let urls = sources(&app).await;
    let body = json!({"prompt": "a red dress", "imageUrls": urls});

    let first = post(&app, "/api/generate", None, Some(b"order-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert!(!first.replayed);
    let ids = first.task_ids();
    assert_eq!(ids.len(), 2);
    for _ in 0..3 {
        let again = post(&app, "/api/generate", None, Some(b"order-1"), &body).await;
        assert_eq!(again.status, 200);
        assert!(again.replayed, "a replay says so");
        assert_eq!(again.text, first.text, "the first answer, byte for byte");
    }

    let batch = post(&app, "/api/batches", None, Some(b"batch-1"), &body).await;
    assert_eq!(batch.status, 200, "{}", batch.text);
    let again = post(&app, "/api/batches", None, Some(b"batch-1"), &body).await;
    assert!(again.replayed);
    assert_eq!(again.text, batch.text);
    let (_, batches) = app.get_json("/api/batches").await;
    assert_eq!(batches["batches"].as_array().unwrap().len(), 1, "{batches}");

    // A refusal of the request itself is kept too: the same request is refused the same way.
    let bad = json!({"imageUrls": urls});
    let refused = post(&app, "/api/generate", None, Some(b"order-2"), &bad).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(!refused.replayed);
    let again = post(&app, "/api/generate", None, Some(b"order-2"), &bad).await;
    assert_eq!((again.status, again.replayed), (400, true));
    assert_eq!(again.text, refused.text);
    // Without a key, every request is new (as before).
    let plain = post(&app, "/api/generate", None, None, &body).await;
    assert_eq!(plain.status, 200);
    assert!(!plain.replayed);

    let mut all: Vec<String> = ids.clone();
    all.extend(batch.task_ids());
    all.extend(plain.task_ids());
    assert_eq!(task_count(&app).await, all.len(), "nothing but these tasks");
    let finals = app.wait_all_final(&all, FINAL).await;
    assert_eq!(finals.get("completed"), Some(&all.len()), "{finals:?}");
    let created = app.sim.as_ref().unwrap().stats().created;
    println!(
        "replays: {} tasks, {created} creates at the simulator",
        all.len()
    );
    assert_eq!(created, all.len() as u64, "one create per task");
}

/// Another request under a used key is a 422 that creates nothing, whatever differs: the
/// body or the route. Malformed keys are a 400.
#[tokio::test]
async fn the_same_key_with_another_request_is_refused() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let urls = sources(&app).await;
    let body = json!({"prompt": "a red dress", "imageUrls": urls});
    let first = post(&app, "/api/generate", None, Some(b"k"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let other_body = json!({"prompt": "a blue dress", "imageUrls": urls});
    for (path, body) in [("/api/generate", &other_body), ("/api/batches", &body)] {
        let reused = post(&app, path, None, Some(b"k"), body).await;
        assert_eq!(reused.status, 422, "{path}: {}", reused.text);
        assert_eq!(reused.json["code"], "idempotency_key_reused");
        assert!(!reused.replayed);
    }
    // The first request still replays.
    let again = post(&app, "/api/generate", None, Some(b"k"), &body).await;
    assert!(again.replayed);
    assert_eq!(again.text, first.text);

    let too_long = vec![b'k'; 256];
    let longest = vec![b'k'; 255];
    for bad in [
        b"".as_slice(),
        too_long.as_slice(),
        b"caf\xc3\xa9",
        b"tab\there",
    ] {
        let refused = post(&app, "/api/generate", None, Some(bad), &body).await;
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.text);
        assert_eq!(refused.json["code"], "invalid_idempotency_key");
    }
    let fine = post(&app, "/api/generate", None, Some(&longest), &body).await;
    assert_eq!(fine.status, 200, "{}", fine.text);
    assert_eq!(
        task_count(&app).await,
        4,
        "two requests made tasks, two each"
    );
}

/// Many requests with one key at once, spread over `apps` (instances sharing one database
/// and bucket): exactly one task set; every other answer is a 409 (the first was still
/// running) or a replay of the one answer.
async fn many_at_once(apps: &[&TestApp], path: &str, n: usize) {
    let first = apps[0];
    // Ten sources of our own make the first request's work long enough for the others to
    // arrive while it runs.
    let urls: Vec<String> = sources(first).await.into_iter().cycle().take(10).collect();
    let body = json!({"prompt": "at once", "imageUrls": urls});
    let key = format!("same-key {}", uuid::Uuid::now_v7());
    // One open connection per request, so they all start at once.
    futures::future::join_all((0..n).map(|i| apps[i % apps.len()].get_json("/healthz"))).await;
    let before = task_count(first).await;
    let answers = futures::future::join_all((0..n).map(|i| {
        post(
            apps[i % apps.len()],
            path,
            None,
            Some(key.as_bytes()),
            &body,
        )
    }))
    .await;
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut bodies = BTreeSet::new();
    let mut replays = 0;
    for answer in &answers {
        *statuses.entry(answer.status).or_default() += 1;
        match answer.status {
            200 => {
                bodies.insert(answer.text.clone());
                replays += usize::from(answer.replayed);
            }
            409 => {
                assert_eq!(answer.json["code"], "idempotency_key_in_flight");
                assert_eq!(answer.retry_after.as_deref(), Some("1"));
            }
            other => panic!("{path}: {other} {}", answer.text),
        }
    }
    println!(
        "{path}, {n} requests with one key at once on {} instance(s): statuses {statuses:?}, {replays} replays",
        apps.len()
    );
    assert_eq!(
        bodies.len(),
        1,
        "{} different answers, not one",
        bodies.len()
    );
    assert_eq!(
        statuses[&200],
        replays + 1,
        "one fresh answer, the rest replays"
    );
    assert_eq!(
        task_count(first).await - before,
        urls.len(),
        "exactly one task set"
    );
}

/// A second instance on `app`'s database file and bucket directory.
async fn second_instance(app: &TestApp) -> TestApp {
    let dir = app.dir.path();
    let database = format!("sqlite://{}", dir.join("darkroom.db").display());
    let bucket = dir.join("bucket").display().to_string();
    spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_DATABASE_URL", database.as_str()),
        ("DARKROOM_BUCKET_DIR", bucket.as_str()),
    ])
    .await
}

#[tokio::test]
async fn many_requests_with_one_key_at_once_make_one_task_set() {
    let one = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    many_at_once(&[&one], "/api/generate", 24).await;
    // Two instances on one SQLite file: each has its own writer, so they truly race.
    let two = second_instance(&one).await;
    many_at_once(&[&one, &two], "/api/generate", 24).await;
    many_at_once(&[&one, &two], "/api/batches", 24).await;
}

#[tokio::test]
async fn many_requests_with_one_key_at_once_make_one_task_set_on_postgres() {
    let db = fresh_postgres().await;
    let env = [
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_DATABASE_URL", db.url.as_str()),
    ];
    let one = spawn_app(&env).await;
    let two = spawn_app(&env).await;
    many_at_once(&[&one, &two], "/api/generate", 24).await;
    many_at_once(&[&one, &two], "/api/batches", 24).await;
    two.stop().await;
    one.stop().await;
}

/// Keys live in the database: a restarted server replays the answers of the one before.
#[tokio::test]
async fn replays_survive_a_restart() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let urls = sources(&app).await;
    let body = json!({"prompt": "before the restart", "imageUrls": urls});
    let first = post(&app, "/api/generate", None, Some(b"restart"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let app = app.restart(&[("DARKROOM_WORKERS", "false")]).await;
    let again = post(&app, "/api/generate", None, Some(b"restart"), &body).await;
    assert_eq!(again.status, 200);
    assert!(again.replayed);
    assert_eq!(again.text, first.text);
    assert_eq!(task_count(&app).await, 2);
}

/// One key name, two API keys: two keys. Neither sees the other's answer.
#[tokio::test]
async fn owners_with_the_same_key_are_independent() {
    const ALICE: &str = "dk_alice_0123456789abcdef0123";
    const BOB: &str = "dk_bob_0123456789abcdef012345";
    let keys = format!("alice:{ALICE},bob:{BOB}");
    let app = spawn_app(&[
        ("DARKROOM_API_KEYS", keys.as_str()),
        ("DARKROOM_WORKERS", "false"),
    ])
    .await;
    let body = json!({"prompt": "mine", "imageUrls": ["https://example.com/a.png"]});
    let alice = post(&app, "/api/generate", Some(ALICE), Some(b"shared"), &body).await;
    let bob = post(&app, "/api/generate", Some(BOB), Some(b"shared"), &body).await;
    assert_eq!(
        (alice.status, bob.status),
        (200, 200),
        "{} {}",
        alice.text,
        bob.text
    );
    assert!(!bob.replayed, "bob's first use of the key is his own");
    assert_ne!(alice.task_ids(), bob.task_ids());
    let again = post(&app, "/api/generate", Some(ALICE), Some(b"shared"), &body).await;
    assert!(again.replayed);
    assert_eq!(again.text, alice.text);
    // A key is the owner's whatever it was used for: bob's other body under it is a reuse
    // of his own key, not alice's.
    let other = json!({"prompt": "other", "imageUrls": ["https://example.com/a.png"]});
    let reused = post(&app, "/api/generate", Some(BOB), Some(b"shared"), &other).await;
    assert_eq!(reused.status, 422, "{}", reused.text);
}

/// A key is kept `DARKROOM_IDEMPOTENCY_TTL_HOURS`; after that the same request is new.
#[tokio::test]
async fn keys_expire() {
    // 0.0003 h = 1.08 s.
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_IDEMPOTENCY_TTL_HOURS", "0.0003"),
    ])
    .await;
    let body = json!({"prompt": "soon forgotten", "imageUrls": ["https://example.com/a.png"]});
    let first = post(&app, "/api/generate", None, Some(b"short-lived"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let answered = Instant::now();
    loop {
        let again = post(&app, "/api/generate", None, Some(b"short-lived"), &body).await;
        assert_eq!(again.status, 200, "{}", again.text);
        if !again.replayed {
            let kept = answered.elapsed();
            println!("key kept {kept:?} (TTL 1.08 s)");
            assert!(
                kept >= Duration::from_millis(1000),
                "expired early: {kept:?}"
            );
            assert_ne!(again.task_ids(), first.task_ids(), "a new request");
            break;
        }
        assert_eq!(again.text, first.text);
        assert!(
            answered.elapsed() < Duration::from_secs(10),
            "never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(task_count(&app).await, 2);
}

/// Uploads replay too, though each client draws a new multipart boundary per request: the
/// parts are compared, not the bytes on the wire. No file is stored twice.
#[tokio::test]
async fn uploads_replay() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let files = [("a.png", png(40, 30)), ("b.png", png(30, 40))];
    let first = upload(&app, "up-1", &files).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["uploadedCount"], 2);
    let again = upload(&app, "up-1", &files).await;
    assert_eq!((again.status, again.replayed), (200, true));
    assert_eq!(again.text, first.text);
    let other = upload(&app, "up-1", &[("a.png", png(41, 30))]).await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert_eq!(other.json["code"], "idempotency_key_reused");
    let renamed = upload(
        &app,
        "up-1",
        &[("c.png", png(40, 30)), ("b.png", png(30, 40))],
    )
    .await;
    assert_eq!(renamed.status, 422, "a file name is part of the request");
    assert_eq!(app.blobs.list("uploads").await.unwrap().len(), 2);
}

/// The multipart body of one PNG, with a fixed boundary, cut in two.
fn multipart_halves(image: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut body = b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"slow.png\"\r\nContent-Type: image/png\r\n\r\n".to_vec();
    body.extend_from_slice(image);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let rest = body.split_off(body.len() / 2);
    (body, rest)
}

/// An upload whose body is sent half now, the rest when `rest` is sent (or never, when it
/// is dropped).
fn slow_upload(
    app: &TestApp,
    key: &str,
    first_half: Vec<u8>,
) -> (
    tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    tokio::task::JoinHandle<Answer>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let request = app
        .http
        .post(app.url("/api/upload"))
        .header("Idempotency-Key", key)
        .header("Content-Type", "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(chunks));
    let sent = tokio::spawn(async move { Answer::of(request.send().await.unwrap()).await });
    tx.try_send(Ok(first_half)).unwrap();
    (tx, sent)
}

/// Unanswered reservations of `key` in the database (polled until `want`).
async fn wait_for_reservations(app: &TestApp, key: &str, want: i64) {
    let db = app.dir.path().join("darkroom.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (held,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM idempotency_keys WHERE idem_key = ? AND status IS NULL",
        )
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if held == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{key}: {held} reservations, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request while the first with its key still runs is a 409 with Retry-After, and
/// creates nothing; the first then answers, and a retry replays it. A request that ends
/// without an answer (the client went away mid-body) frees its key for the retry.
#[tokio::test]
async fn a_request_in_flight_holds_its_key_and_an_interrupted_one_frees_it() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let image = png(64, 48);
    let (head, rest) = multipart_halves(&image);

    let (tx, first) = slow_upload(&app, "slow", head.clone());
    wait_for_reservations(&app, "slow", 1).await;
    let second = upload(&app, "slow", &[("slow.png", image.clone())]).await;
    assert_eq!(second.status, 409, "{}", second.text);
    assert_eq!(second.json["code"], "idempotency_key_in_flight");
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    tx.send(Ok(rest.clone())).await.unwrap();
    drop(tx);
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text);
    let retry = upload(&app, "slow", &[("slow.png", image.clone())]).await;
    assert!(retry.replayed, "{}", retry.text);
    assert_eq!(retry.text, first.text);
    assert_eq!(app.blobs.list("uploads").await.unwrap().len(), 1);

    // The client goes away mid-body: the key is released, and the retry runs afresh.
    let (tx, cut) = slow_upload(&app, "cut", head);
    wait_for_reservations(&app, "cut", 1).await;
    cut.abort();
    drop(tx);
    wait_for_reservations(&app, "cut", 0).await;
    let retry = upload(&app, "cut", &[("slow.png", image)]).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert!(!retry.replayed);
    assert_eq!(app.blobs.list("uploads").await.unwrap().len(), 2);
}

/// An answer of our own failure (503: the database is full) is not kept: the key is
/// released, and the retry with it, once the database has room, runs afresh.
#[tokio::test]
async fn a_storage_failure_releases_the_key() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let sqlite = app.sqlite.clone().unwrap();
    // Ten tasks with long prompts need new pages; a reservation fits in the pages there are.
    let long = "a dress of many colours ".repeat(200);
    let urls = vec!["https://example.com/a.png"; 10];
    let body = json!({"prompt": long, "imageUrls": urls});
    sqlite
        .set_page_cap(Some(sqlite.page_count().await.unwrap()))
        .await
        .unwrap();
    let refused = post(&app, "/api/generate", None, Some(b"full"), &body).await;
    sqlite.set_page_cap(None).await.unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.json["code"], "storage_full");
    wait_for_reservations(&app, "full", 0).await;
    let retry = post(&app, "/api/generate", None, Some(b"full"), &body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert!(!retry.replayed);
    assert_eq!(task_count(&app).await, 10);
}
