//! R8: the guarded fetcher refuses every probe of RELIABILITY.md's list, directly and
//! through redirects from an allowed host, before connecting: a loopback listener standing
//! where the probes point counts 0 connections, and 0 bytes are stored. A name whose answer
//! changes from a public address to loopback between the check and the connection (DNS
//! rebinding) is not connected to either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
                // Read the request's head first: closing on unread bytes resets the
                // connection, and the client would see an error instead of the image.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
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
        // docs/SECURITY.md ("Downloads (SSRF)") lists as refused.
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
    let list = probes(counter.port);
    let mut fetches = 0;
    for probe in &list {
        let via = format!("http://{redirect_addr}/to?u={}", encode(probe));
        for (how, url) in [("direct", probe.as_str()), ("redirect", via.as_str())] {
            fetches += 1;
            match fetcher.download_spooled(url, 1024 * 1024).await {
                Err(FetchError::Forbidden { reason, .. }) => {
                    println!("{how:8} {probe:50} refused: {reason}");
                }
                Err(other) => {
                    panic!("{how} {probe}: expected a refusal before connecting, got {other:?}")
                }
                Ok(spooled) => panic!(
                    "{how} {probe}: fetched {} bytes",
                    spooled.len().unwrap_or(0)
                ),
            }
        }
    }
    let connections = counter.connections.load(Ordering::SeqCst);
    let redirects = redirects_served.load(Ordering::SeqCst);
    println!(
        "R8: {} probes, {fetches} fetches (direct and via a redirect), each refused before connecting; connections to the probe listener: {connections}; redirects served by the allowed host: {redirects}",
        list.len()
    );
    assert_eq!(connections, 0);
    // Every redirect probe really went through the allowed host first.
    assert_eq!(redirects, list.len());
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
    for (id, result) in ids.iter().zip(&results) {
        // The simulator knows a task before darkroom has stored the id it answered: wait for
        // darkroom's record of it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let provider_id = loop {
            let status = app.status(id).await;
            if let Some(provider_id) = status["providerTaskId"].as_str() {
                break provider_id.to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} not submitted after 20 s: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let callback = sim.callback_url(&provider_id).expect("callback URL");
        let body = json!({"code": 200, "msg": "ok", "data": {
            "taskId": provider_id, "state": "success",
            "resultJson": json!({"resultUrls": [result]}).to_string()}});
        let response = app.http.post(&callback).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let status = app.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(status["status"], "failed", "{result}: {status}");
        assert_eq!(status["errorCode"], "result_download_failed", "{status}");
    }
    let stored = app.blobs.list("generated").await.unwrap();
    let connections = counter.connections.load(Ordering::SeqCst);
    println!(
        "R8 end to end: {} tasks given private result URLs, each failed with result_download_failed; connections to the probe listener: {connections}; objects stored under generated/: {}",
        ids.len(),
        stored.len()
    );
    assert_eq!(connections, 0);
    assert!(stored.is_empty(), "{stored:?}");
}

/// DNS as a rebinding attacker runs it: the first lookup answers `first`, every later one
/// `then`. Counts the lookups.
struct Rebinding {
    first: Vec<IpAddr>,
    then: Vec<IpAddr>,
    lookups: AtomicUsize,
}

impl Rebinding {
    fn new(first: &[IpAddr], then: &[IpAddr]) -> Arc<Self> {
        Arc::new(Self {
            first: first.to_vec(),
            then: then.to_vec(),
            lookups: AtomicUsize::new(0),
        })
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Resolve for Rebinding {
    fn resolve(&self, _name: Name) -> Resolving {
        let answer = if self.lookups.fetch_add(1, Ordering::SeqCst) == 0 {
            &self.first
        } else {
            &self.then
        };
        let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(*ip, 0)).collect();
        Box::pin(async move {
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// DNS rebinding: the check sees a public address, the connection would get loopback, where
/// the counting listener stands. The fetcher checks what the client's resolver answers too,
/// so the loopback answer is refused before any connection is made. The public address is
/// never dialled: the check only reads it, and the client is only handed the second answer.
///
/// The test fails if the fetcher connects to an answer it did not check (the listener counts
/// the connection), and it cannot pass without the rebinding being tried: it requires that
/// the public answer passed the check and that the client asked again (two lookups).
#[tokio::test]
async fn a_name_rebound_to_loopback_after_the_check_is_never_connected() {
    let counter = counter().await;
    let p = counter.port;
    // Public (so the check passes) and never connected to by this test.
    let public = IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1));
    let loopback = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];

    // The control: the same listener, reached through an injected resolver for a name the
    // operator trusts, counts the connection. So a rebound fetch that got through would show.
    let trusted = Fetcher::new(
        [("rebind.test".to_owned(), p)],
        Duration::from_secs(2),
        Duration::from_secs(5),
    )
    .unwrap()
    .with_resolver(Rebinding::new(&loopback[..1], &loopback[..1]))
    .unwrap();
    let bytes = trusted
        .get_bytes(&format!("http://rebind.test:{p}/a.png"), 1024 * 1024)
        .await
        .expect("the trusted control reaches the listener");
    let control_connections = counter.connections.swap(0, Ordering::SeqCst);
    assert_eq!(control_connections, 1, "the listener counts connections");
    assert!(!bytes.is_empty());

    let mut probes = 0;
    for then in [&loopback[..1], &loopback[1..], &loopback[..]] {
        for how in ["download", "webhook"] {
            let dns = Rebinding::new(&[public], then);
            let fetcher = Fetcher::new([], Duration::from_secs(2), Duration::from_secs(5))
                .unwrap()
                .with_resolver(dns.clone())
                .unwrap();
            let url = format!("https://rebind.test:{p}/a.png");
            let result = match how {
                "download" => fetcher.get_bytes(&url, 1024 * 1024).await.map(|b| b.len()),
                _ => fetcher
                    .post(&url, Default::default(), "{}".into())
                    .await
                    .map(usize::from),
            };
            probes += 1;
            let err = result.expect_err("a rebound name must not be fetched");
            println!(
                "{how:8} public, then {then:?}: {} lookups; {err}",
                dns.lookups()
            );
            assert_eq!(
                dns.lookups(),
                2,
                "{how}, then {then:?}: the public answer passes the check and the client looks the name up again"
            );
            assert!(
                matches!(err, FetchError::Transport { .. }),
                "{how}, then {then:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .contains("rebind.test has no public address"),
                "{how}, then {then:?}: the error names the cause for the operator: {err}"
            );
            assert_eq!(
                counter.connections.load(Ordering::SeqCst),
                0,
                "{how}, then {then:?}: connected to the rebound address"
            );
        }
    }
    println!(
        "R8 DNS rebinding: control through a trusted name: {control_connections} connection; {probes} rebound fetches (download and webhook POST; loopback v4, v6, both) refused; connections to the listener: {}",
        counter.connections.load(Ordering::SeqCst)
    );
}
