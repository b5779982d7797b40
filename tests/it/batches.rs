//! The batch API: create, counts, list, cancel, retry of failed tasks, and the ZIP of a
//! batch's results (checked by Python's zipfile, an independent reader).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::harness::{TestApp, png, spawn_app};
use serde_json::{Value, json};

async fn uploads(app: &TestApp, count: usize) -> Vec<Value> {
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("b{i}.png"), png(40 + i as u32, 30)))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (status, up) = app.upload(&refs).await;
    assert_eq!(status, 200, "{up}");
    up["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!({"key": u["key"], "url": u["url"]}))
        .collect()
}

async fn create_batch(app: &TestApp, count: usize) -> (String, Vec<String>) {
    let body = json!({"prompt": "a batch", "uploads": uploads(app, count).await, "priority": 3});
    let (code, answer) = app.post_json("/api/batches", &body).await;
    assert_eq!(code, 200, "{answer}");
    let id = answer["batchId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("bat_") && id.len() == 36, "{id}");
    let tasks = answer["taskIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    (id, tasks)
}

async fn wait_done(app: &TestApp, batch: &str) -> Value {
    let start = Instant::now();
    loop {
        let (code, view) = app.get_json(&format!("/api/batches/{batch}")).await;
        assert_eq!(code, 200, "{view}");
        if view["done"] == true {
            return view;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "batch not done: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn batch_zip_holds_exactly_the_batch_results() {
    let app = spawn_app(&[]).await;
    let (batch, task_ids) = create_batch(&app, 3).await;
    // Another batch and a loose task: their results must not be in the archive.
    let (other, _) = create_batch(&app, 2).await;
    let loose = app.generate_many(1, json!({})).await;
    let view = wait_done(&app, &batch).await;
    wait_done(&app, &other).await;
    app.wait_final(&loose[0], Duration::from_secs(20)).await;

    assert_eq!(view["total"], 3);
    assert_eq!(view["counts"], json!({"succeeded": 3}));
    assert_eq!(view["tasks"].as_array().unwrap().len(), 3);
    assert!(view["credits"].as_i64().unwrap() >= 0);

    // The expected archive: every result of every task of the batch, byte for byte, under
    // its name in the bucket (`kie-{taskId}-0.png`), dated when its task completed.
    let mut expected = BTreeMap::new();
    let mut dates = BTreeMap::new();
    for id in &task_ids {
        let task = app
            .repo
            .get(&darkroom::domain::TaskId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.batch_id.as_deref(), Some(batch.as_str()));
        let completed = task
            .completed_at
            .expect("a succeeded task has completed_at")
            / 1000;
        for (i, key) in task.result_keys.iter().enumerate() {
            let ext = key.rsplit_once('.').unwrap().1;
            let name = format!("kie-{id}-{i}.{ext}");
            assert_eq!(key, &format!("generated/{name}"), "the bucket's own name");
            dates.insert(name.clone(), completed);
            expected.insert(name, app.blobs.get_bytes(key).await.unwrap());
        }
    }
    assert!(!expected.is_empty());

    let response = app
        .http
        .get(app.url(&format!("/api/batches/{batch}/zip")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let archive = response.bytes().await.unwrap();
    let path = app.dir.path().join("batch.zip");
    std::fs::write(&path, &archive).unwrap();
    let out_dir = app.dir.path().join("unzipped");
    // Python's zipfile checks every CRC (testzip) and extracts: an independent reader.
    // Each entry's date as Python reads it (MS-DOS fields, UTC), in Unix seconds.
    let script = "import sys, zipfile, calendar\nz = zipfile.ZipFile(sys.argv[1])\nbad = z.testzip()\nassert bad is None, bad\nz.extractall(sys.argv[2])\nprint('\\n'.join(i.filename + ' ' + str(calendar.timegm(i.date_time + (0, 0, 0))) for i in sorted(z.infolist(), key=lambda i: i.filename)))";
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            path.to_str().unwrap(),
            out_dir.to_str().unwrap(),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: Vec<(String, i64)> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, at) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), at.parse().unwrap())
        })
        .collect();
    for (name, at) in &listed {
        // MS-DOS time has 2 s steps.
        let completed = dates[name];
        assert!(
            (completed - 2..=completed).contains(at),
            "{name} is dated {at}, its task completed at {completed}"
        );
    }
    let names: Vec<String> = listed.into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        expected.keys().cloned().collect::<Vec<_>>(),
        "exactly the batch's results"
    );
    for (name, bytes) in &expected {
        assert_eq!(
            &std::fs::read(out_dir.join(name)).unwrap(),
            bytes,
            "{name} byte for byte"
        );
    }
    println!(
        "batch_zip_holds_exactly_the_batch_results: {} entries, {} bytes, CRCs verified by Python zipfile; other batch and loose task absent",
        names.len(),
        archive.len()
    );

    let (code, listing) = app.get_json("/api/batches").await;
    assert_eq!(code, 200);
    let listed: Vec<&str> = listing["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batchId"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![other.as_str(), batch.as_str()], "newest first");

    let (code, missing) = app
        .get_json("/api/batches/bat_0000000000000000000000000000000f")
        .await;
    assert_eq!(
        (code, missing["code"].as_str()),
        (404, Some("batch_not_found"))
    );
}

#[tokio::test]
async fn cancel_a_batch() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (batch, tasks) = create_batch(&app, 4).await;
    let (code, view) = app
        .post_json(&format!("/api/batches/{batch}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200, "{view}");
    assert_eq!(view["canceled"].as_array().unwrap().len(), tasks.len());
    assert_eq!(view["counts"], json!({"canceled": 4}));
    assert_eq!(view["done"], true);
    // Again: nothing left to cancel, still fine.
    let (code, view) = app
        .post_json(&format!("/api/batches/{batch}/cancel"), &json!({}))
        .await;
    assert_eq!(code, 200);
    assert_eq!(view["canceled"], json!([]));
}

#[tokio::test]
async fn retry_a_batch_failed_tasks_once() {
    let app = spawn_app(&[("DARKROOM_SIM_FAIL_RATE", "1")]).await;
    let (batch, tasks) = create_batch(&app, 2).await;
    let view = wait_done(&app, &batch).await;
    assert_eq!(view["counts"], json!({"failed": 2}), "{view}");
    let (code, view) = app
        .post_json(&format!("/api/batches/{batch}/retry"), &json!({}))
        .await;
    assert_eq!(code, 200, "{view}");
    let retried = view["retried"].as_array().unwrap();
    assert_eq!(retried.len(), 2);
    for r in retried {
        assert!(tasks.contains(&r["retryOf"].as_str().unwrap().to_owned()));
    }
    assert_eq!(view["total"], 4, "the retries join the batch");
    let first_retries: Vec<String> = retried
        .iter()
        .map(|r| r["taskId"].as_str().unwrap().to_owned())
        .collect();
    // The originals are retried once only, even when their retries fail again.
    wait_done(&app, &batch).await;
    let (_, view) = app
        .post_json(&format!("/api/batches/{batch}/retry"), &json!({}))
        .await;
    let again: Vec<&str> = view["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["retryOf"].as_str().unwrap())
        .collect();
    // Exactly the failed retries are retried now, each once; no original again.
    assert_eq!(again.len(), first_retries.len(), "{view}");
    assert!(
        again
            .iter()
            .all(|id| first_retries.contains(&(*id).to_owned())),
        "{again:?} should be the first retries {first_retries:?}"
    );
    assert!(
        again.iter().all(|id| !tasks.contains(&(*id).to_owned())),
        "{again:?}"
    );
}

#[tokio::test]
async fn batch_requests_are_validated() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (code, body) = app.post_json("/api/batches", &json!({"prompt": "x"})).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("images_required")),
        "{body}"
    );
    let (code, body) = app
        .post_json(
            "/api/batches",
            &json!({"prompt": "x", "imageUrls": ["https://example.com/a.png"], "batchId": "mine"}),
        )
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("unsupported_field")),
        "{body}"
    );
}

#[tokio::test]
async fn an_unfinished_batch_is_not_zipped_but_waited_for_on_request() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (batch, _) = create_batch(&app, 2).await;
    let zip = |query: &'static str| {
        app.http
            .get(app.url(&format!("/api/batches/{batch}/zip{query}")))
            .send()
    };
    let refused = zip("").await.unwrap();
    assert_eq!(refused.status(), 409);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "batch_not_finished", "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("2 of its 2 tasks are not final yet (2 queued)")
            && message.contains("?wait=true"),
        "{message}"
    );

    // With ?wait=true the request waits for the batch: it finishes meanwhile.
    let mut waiting = tokio::spawn(zip("?wait=true"));
    // Nothing runs yet (workers off): the request is held, not answered 409.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "answered before the batch finished"
    );
    let stepper = {
        let engine = app.engine.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                engine.run_pending().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends when the batch does")
        .unwrap()
        .unwrap();
    stepper.abort();
    assert_eq!(answer.status(), 200);
    let archive = answer.bytes().await.unwrap();
    // Two entries: the central directory's count in the end record.
    let end = &archive[archive.len() - 22..];
    assert_eq!(&end[..4], b"PK\x05\x06");
    assert_eq!(u16::from_le_bytes([end[10], end[11]]), 2);
    assert_eq!(
        wait_done(&app, &batch).await["counts"],
        json!({"succeeded": 2})
    );
}
