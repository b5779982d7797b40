//! R11: slow clients are cut off by timeouts (body at 1 byte/s, headers at 1 byte/s, idle
//! connections), while other requests are answered as usual meanwhile.

use std::time::{Duration, Instant};

use crate::harness::spawn_app;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); returns what came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
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

#[tokio::test]
async fn trickling_clients_are_cut_off_and_others_are_served() {
    let app = spawn_app(&[
        ("DARKROOM_BODY_TIMEOUT_SECS", "2"),
        ("DARKROOM_BODY_MIN_RATE_BYTES", "1024"),
        ("DARKROOM_HEADER_TIMEOUT_SECS", "2"),
    ])
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // A body at 1 byte/s.
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
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            let elapsed = started.elapsed();
            trickle.abort();
            (String::from_utf8_lossy(&got).into_owned(), elapsed)
        })
    };

    // Headers at 1 byte/s.
    let slow_headers = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let started = Instant::now();
            let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            for byte in request {
                if stream.write_all(&[*byte]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_secs(1), stream.read(&mut probe)).await
                {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            started.elapsed()
        })
    };

    // Idle connections that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }

    // Meanwhile, ordinary requests keep being answered promptly.
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let started = Instant::now();
        let (code, _) = app.get_json("/healthz").await;
        assert_eq!(code, 200);
        let (code, _) = app
            .post_json("/api/generate", &serde_json::json!({"prompt": "p"}))
            .await;
        assert_eq!(code, 400);
        slowest = slowest.max(started.elapsed());
        served += 2;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (answer, body_cut_after) = slow_body.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        body_cut_after < Duration::from_secs(8),
        "{body_cut_after:?}"
    );
    let headers_cut_after = slow_headers.await.unwrap();
    assert!(
        headers_cut_after < Duration::from_secs(8),
        "{headers_cut_after:?}"
    );

    let mut closed = 0;
    for mut stream in idle {
        let (_, was_closed) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        closed += usize::from(was_closed);
    }
    println!(
        "R11: 1 byte/s body cut off with 408 after {:.1} s; 1 byte/s headers cut off after {:.1} s; {closed} of 50 idle connections closed; meanwhile {served} other requests answered, slowest {} ms",
        body_cut_after.as_secs_f64(),
        headers_cut_after.as_secs_f64(),
        slowest.as_millis()
    );
    assert_eq!(closed, 50);
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
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
