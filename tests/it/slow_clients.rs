//! R11: slow clients are cut off by timeouts (body at 1 byte/s, headers at 1 byte/s, idle
//! connections), while other requests are answered as usual meanwhile.

use std::time::{Duration, Instant};

use crate::harness::spawn_app;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); returns what came.
async fn read_until_closed(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

/// The body and header timeouts the trickling test configures, and how much later than its
/// timeout a slow client may be cut off (timer, scheduling and the close reaching the
/// client). `docs/RELIABILITY.md` (R11) states the same bound.
const TIMEOUT: Duration = Duration::from_secs(2);
const MARGIN: Duration = Duration::from_secs(1);
/// The longest an ordinary request may take while the slow clients hold their connections.
const SERVED_WITHIN: Duration = Duration::from_secs(1);

/// How much earlier than the timeout the client may see the cut: the server's timer starts
/// when it accepts the connection, which can be a moment before the client's `connect`
/// returns and its own clock starts.
const EARLY: Duration = Duration::from_millis(50);

/// Asserts that `what` was cut off no earlier than the timeout (less [`EARLY`]) and within
/// timeout + margin.
fn assert_cut_in_time(what: &str, after: Duration) {
    assert!(
        after >= TIMEOUT - EARLY && after <= TIMEOUT + MARGIN,
        "{what} cut off after {after:?}; expected between {:?} and {:?}",
        TIMEOUT - EARLY,
        TIMEOUT + MARGIN
    );
}

#[tokio::test]
async fn trickling_clients_are_cut_off_and_others_are_served() {
    let secs = TIMEOUT.as_secs().to_string();
    let app = spawn_app(&[
        ("DARKROOM_BODY_TIMEOUT_SECS", secs.as_str()),
        ("DARKROOM_BODY_MIN_RATE_BYTES", "1024"),
        ("DARKROOM_HEADER_TIMEOUT_SECS", secs.as_str()),
    ])
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // A body at 1 byte/s: its allowance is the timeout plus 1/1024 s per byte received.
    let slow_body = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            stream
                .write_all(
                    b"POST /api/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n",
                )
                .await
                .unwrap();
            let started = Instant::now();
            let (reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                let mut sent = 0;
                while writer.write_all(b"{").await.is_ok() && sent < 60 {
                    sent += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                sent
            });
            let mut stream = reader;
            let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(30)).await;
            let elapsed = started.elapsed();
            trickle.abort();
            assert!(
                closed,
                "the trickled body's connection was still open after {elapsed:?}"
            );
            (answer, elapsed)
        })
    };

    // Headers at 1 byte/s; the server's close is seen by the read that follows each byte.
    let slow_headers = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for byte in request {
                if stream.write_all(&[*byte]).await.is_err() {
                    return started.elapsed();
                }
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await {
                    Ok(Ok(0) | Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => panic!("the server answered headers that never ended"),
                    Err(_) => {}
                }
            }
            panic!(
                "the whole request went out at 1 byte/s in {:?} without being cut off",
                started.elapsed()
            );
        })
    };

    // Idle connections: 40 that never send a byte, 10 that idle after one keep-alive
    // request. Each measures how long the server kept it open.
    let mut idle = Vec::new();
    for n in 0..50 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        // Taken before the server can start its header timer for this connection's next
        // request (on accepting it, or on answering the keep-alive request).
        let started = Instant::now();
        let keep_alive = n >= 40;
        if keep_alive {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let read = stream.read(&mut buf).await.unwrap();
            assert!(
                buf[..read].starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..read])
            );
        }
        idle.push(tokio::spawn(async move {
            let (_, closed) = read_until_closed(&mut stream, Duration::from_secs(30)).await;
            assert!(closed, "an idle connection was still open after 30 s");
            (keep_alive, started.elapsed())
        }));
    }

    // Meanwhile, ordinary requests keep being answered, for as long as any slow client is
    // still connected; `while_held` counts those answered while all 52 were.
    let (mut served, mut while_held) = (0, 0);
    let mut slowest = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(30);
    let all_cut = |idle: &[tokio::task::JoinHandle<(bool, Duration)>]| {
        slow_body.is_finished()
            && slow_headers.is_finished()
            && idle.iter().all(|h| h.is_finished())
    };
    while !all_cut(&idle) {
        assert!(
            Instant::now() < deadline,
            "slow clients still connected after 30 s"
        );
        let none_cut = !slow_body.is_finished()
            && !slow_headers.is_finished()
            && !idle.iter().any(|h| h.is_finished());
        let started = Instant::now();
        let (code, _) = app.get_json("/healthz").await;
        assert_eq!(code, 200);
        let (code, _) = app
            .post_json("/api/generate", &serde_json::json!({"prompt": "p"}))
            .await;
        assert_eq!(code, 400);
        slowest = slowest.max(started.elapsed());
        served += 2;
        if none_cut {
            while_held += 2;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (answer, body_cut_after) = slow_body.await.unwrap();
    let headers_cut_after = slow_headers.await.unwrap();
    let (mut fresh, mut kept) = (Vec::new(), Vec::new());
    for handle in idle {
        let (keep_alive, after) = handle.await.unwrap();
        if keep_alive {
            kept.push(after);
        } else {
            fresh.push(after);
        }
    }
    let range = |v: &[Duration]| {
        let min = v.iter().min().unwrap().as_secs_f64();
        let max = v.iter().max().unwrap().as_secs_f64();
        format!("{min:.2}–{max:.2} s")
    };
    println!(
        "R11: 1 byte/s body cut off with {} after {:.2} s; 1 byte/s headers cut off after {:.2} s; {} fresh idle connections closed after {}, {} idle keep-alive connections after {}; meanwhile {served} other requests answered ({while_held} while every slow client was still connected), slowest {} ms",
        answer.lines().next().unwrap_or("nothing"),
        body_cut_after.as_secs_f64(),
        headers_cut_after.as_secs_f64(),
        fresh.len(),
        range(&fresh),
        kept.len(),
        range(&kept),
        slowest.as_millis()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert_cut_in_time("the 1 byte/s body", body_cut_after);
    assert_cut_in_time("the 1 byte/s headers", headers_cut_after);
    for after in &fresh {
        assert_cut_in_time("a fresh idle connection", *after);
    }
    for after in &kept {
        assert_cut_in_time("an idle keep-alive connection", *after);
    }
    assert!(
        while_held >= 10,
        "only {while_held} requests answered while the slow clients were connected"
    );
    assert!(
        slowest < SERVED_WITHIN,
        "an ordinary request took {slowest:?} while slow clients were connected"
    );
}

/// A body that keeps up with the minimum rate is not cut, however long it takes overall
/// within the request timeout.
#[tokio::test]
async fn a_steady_body_is_not_cut() {
    let app = spawn_app(&[
        ("DARKROOM_BODY_TIMEOUT_SECS", "1"),
        ("DARKROOM_BODY_MIN_RATE_BYTES", "1000"),
    ])
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let body = format!("{{\"prompt\": \"{}\"}}", "x".repeat(5000));
    stream
        .write_all(
            format!(
                "POST /api/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 2,000 bytes every 0.5 s: 4,000 bytes/s, for about 1.5 s in all.
    for piece in body.as_bytes().chunks(2000) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("images_required"), "{answer}");
}
