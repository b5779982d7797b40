//! R8: the guarded fetcher refuses every probe of RELIABILITY.md's list, directly and
//! through redirects from an allowed host, before connecting: a loopback listener standing
//! where the probes point counts 0 connections, and 0 bytes are stored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::spawn_app;
use axum::Router;
use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use darkroom::net::{FetchError, Fetcher};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// A listener that counts every connection and answers each with a tiny PNG, so a probe
/// that got through would both connect and download bytes.
struct Counter {
    port: u16,
    connections: Arc<AtomicUsize>,
}

async fn counter() -> Counter {
    let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let mut listeners = vec![v4];
    // The same port on ::1 too, where the machine has IPv6 loopback.
    if let Ok(v6) = TcpListener::bind(("::1", port)).await {
        listeners.push(v6);
    }
    for listener in listeners {
        let connections = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let body = crate::harness::png(2, 2);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            }
        });
    }
    Counter { port, connections }
}

/// The allowed (trusted) loopback host that redirects to whatever `?u=` says.
async fn redirector() -> (SocketAddr, Arc<AtomicUsize>) {
    #[derive(serde::Deserialize)]
    struct To {
        u: String,
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new().route(
        "/to",
        get(move |Query(to): Query<To>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                (StatusCode::FOUND, [(header::LOCATION, to.u)]).into_response()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

/// RELIABILITY.md's probe list; `{p}` is the counting listener's port.
fn probes(p: u16) -> Vec<String> {
    [
        "https://127.0.0.1:{p}/a.png",
        "http://127.0.0.1:{p}/a.png",
        "https://127.1:{p}/a.png",
        "https://2130706433:{p}/a.png",
        "https://0x7f000001:{p}/a.png",
        "https://0177.0.0.1:{p}/a.png",
        "https://0.0.0.0:{p}/a.png",
        "https://[::1]:{p}/a.png",
        "https://[::]:{p}/a.png",
        "https://[::ffff:127.0.0.1]:{p}/a.png",
        "https://[::ffff:7f00:1]:{p}/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "http://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://10.0.0.1/a.png",
        "https://172.16.0.1/a.png",
        "https://192.168.1.1/a.png",
        "https://100.64.0.1/a.png",
        "https://198.18.0.1/a.png",
        "https://240.0.0.1/a.png",
        "https://[fe80::1]/a.png",
        "https://[fc00::1]/a.png",
        "https://[64:ff9b::a00:1]/a.png",
        "https://[2002:a00:1::]/a.png",
        // Teredo (2001:0::/32, the server and client addresses embedded) and multicast, which
        // the README lists as refused.
        "https://[2001:0:a00:1::1]/a.png",
        "https://224.0.0.1/a.png",
        "https://239.255.255.250/a.png",
        "https://[ff02::1]/a.png",
        "https://[ff05::2]/a.png",
        "https://localhost:{p}/a.png",
        "http://localhost:{p}/a.png",
        "http://user@allowed@127.0.0.1:{p}/a.png",
        "https://user:pw@127.0.0.1:{p}/a.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1:{p}/a.png",
        "gopher://127.0.0.1:{p}/_GET",
        "data:image/png;base64,iVBORw0KGgo=",
    ]
    .iter()
    .map(|u| u.replace("{p}", &p.to_string()))
    .collect()
}

fn encode(url: &str) -> String {
    url::form_urlencoded::byte_serialize(url.as_bytes()).collect()
}

#[tokio::test]
async fn every_probe_is_refused_directly_and_through_redirects_with_zero_connections() {
    let counter = counter().await;
    let (redirect_addr, redirects_served) = redirector().await;
    let fetcher = Fetcher::new(
        [("127.0.0.1".to_owned(), redirect_addr.port())],
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap();
    let mut refused = 0;
    let mut stored_bytes = 0u64;
    let list = probes(counter.port);
    for probe in &list {
        let via = format!("http://{redirect_addr}/to?u={}", encode(probe));
        for (how, url) in [("direct", probe.as_str()), ("redirect", via.as_str())] {
            let result = fetcher.download_spooled(url, 1024 * 1024).await;
            match result {
                Err(FetchError::Forbidden { reason, .. }) => {
                    refused += 1;
                    println!("{how:8} {probe:50} refused: {reason}");
                }
                Err(other) => {
                    panic!("{how} {probe}: expected a refusal before connecting, got {other:?}")
                }
                Ok(spooled) => {
                    stored_bytes += spooled.len().unwrap_or(0);
                    panic!("{how} {probe}: fetched {stored_bytes} bytes")
                }
            }
        }
    }
    let connections = counter.connections.load(Ordering::SeqCst);
    println!(
        "R8: {} probes x (direct, via redirect) = {refused} refused; connections to the probe listener: {connections}; bytes stored: {stored_bytes}; redirects served by the allowed host: {}",
        list.len(),
        redirects_served.load(Ordering::SeqCst)
    );
    assert_eq!(refused, list.len() * 2);
    assert_eq!(connections, 0);
    assert_eq!(stored_bytes, 0);
    // Every redirect probe really went through the allowed host first.
    assert_eq!(redirects_served.load(Ordering::SeqCst), list.len());
}

#[tokio::test]
async fn the_result_host_allowlist_applies_to_every_hop() {
    let (redirect_addr, _) = redirector().await;
    let fetcher = Fetcher::new(
        [("127.0.0.1".to_owned(), redirect_addr.port())],
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_allowed_hosts(["*.results.example".to_owned()]);
    for url in [
        "https://elsewhere.example/a.png".to_owned(),
        format!(
            "http://{redirect_addr}/to?u={}",
            encode("https://elsewhere.example/a.png")
        ),
    ] {
        let err = fetcher.get_bytes(&url, 1024).await.unwrap_err();
        assert!(
            matches!(&err, FetchError::Forbidden { reason, .. } if reason.contains("DARKROOM_RESULT_HOSTS")),
            "{url}: {err}"
        );
    }
}

/// Through the whole service: authenticated callbacks (body trusted) naming probe URLs as
/// results make the tasks fail; nothing connects, nothing lands in the bucket.
#[tokio::test]
async fn callbacks_naming_private_results_store_nothing() {
    let counter = counter().await;
    let (redirect_addr, _) = redirector().await;
    let trusted = redirect_addr.to_string();
    let app = spawn_app(&[
        ("DARKROOM_KIE_VERIFY_CALLBACKS", "false"),
        ("DARKROOM_SIM_DROP_RATE", "1"),
        ("DARKROOM_FIRST_POLL_MS", "600000"),
        ("DARKROOM_TRUSTED_FETCH_HOSTS", &trusted),
    ])
    .await;
    let sim = app.sim.clone().unwrap();
    let p = counter.port;
    let results = [
        format!("https://127.0.0.1:{p}/a.png"),
        format!("https://[::ffff:127.0.0.1]:{p}/a.png"),
        format!("https://localhost:{p}/a.png"),
        "https://169.254.169.254/latest/meta-data/".to_owned(),
        format!(
            "http://{redirect_addr}/to?u={}",
            encode(&format!("http://127.0.0.1:{p}/a.png"))
        ),
    ];
    let ids = app.generate_from_upload(results.len(), json!({})).await;
    // Wait until the simulator knows every task (the dispatcher has submitted them).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sim.task_ids().len() < ids.len() {
        assert!(std::time::Instant::now() < deadline, "tasks not submitted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut failed = 0;
    for (id, result) in ids.iter().zip(&results) {
        let status = app.status(id).await;
        let provider_id = status["providerTaskId"].as_str().unwrap().to_owned();
        let callback = sim.callback_url(&provider_id).expect("callback URL");
        let body = json!({"code": 200, "msg": "ok", "data": {
            "taskId": provider_id, "state": "success",
            "resultJson": json!({"resultUrls": [result]}).to_string()}});
        let response = app.http.post(&callback).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let status = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(status["status"], "failed", "{result}: {status}");
        assert_eq!(status["errorCode"], "result_download_failed", "{status}");
        failed += 1;
    }
    let stored = app.blobs.list("generated").await.unwrap();
    let connections = counter.connections.load(Ordering::SeqCst);
    println!(
        "R8 end to end: {failed} tasks with private result URLs failed; connections: {connections}; objects stored under generated/: {}",
        stored.len()
    );
    assert_eq!(connections, 0);
    assert!(stored.is_empty(), "{stored:?}");
}
