//! R9: image bombs and fakes are refused with a 4xx, and memory stays bounded. It runs
//! alone in a process of its own (`harness::alone`), so the peak resident memory it reports
//! is this scenario's (`/proc/self/clear_refs` resets the peak; `VmHWM` reads it).

use std::io::Write;
use std::time::Instant;

use crate::harness::{TestApp, alone, jpeg, png, proc_status_kib, reset_peak_rss, spawn_app};
use serde_json::Value;

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out
}

/// A PNG that declares `width`×`height` RGB pixels (1.2 GB to decode at 20000×20000) with a
/// valid zlib stream of zero rows after it.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    out.extend(png_chunk(b"IHDR", &ihdr));
    // zlib header, then stored (uncompressed) deflate blocks of zero rows.
    let mut zlib = vec![0x78, 0x01];
    let block = vec![0u8; 60_000];
    for last in [false, false, true] {
        zlib.push(u8::from(last));
        zlib.extend_from_slice(&(block.len() as u16).to_le_bytes());
        zlib.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        zlib.extend_from_slice(&block);
    }
    out.extend(png_chunk(b"IDAT", &zlib));
    out.extend(png_chunk(b"IEND", &[]));
    out
}

async fn upload_one(app: &TestApp, name: &str, part: reqwest::multipart::Part) -> (u16, Value) {
    let form = reqwest::multipart::Form::new().part("files", part.file_name(name.to_owned()));
    let response = app
        .http
        .post(app.url("/api/upload"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bombs_and_fakes_are_refused_with_bounded_memory() {
    if !alone("upload_bombs::bombs_and_fakes_are_refused_with_bounded_memory") {
        return;
    }
    let app = spawn_app(&[]).await;
    // Warm up: the first good upload allocates what every upload needs.
    let (code, body) = upload_one(
        &app,
        "warm.png",
        reqwest::multipart::Part::bytes(png(64, 64)),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    // The 41 MB file is streamed from disk, so the client side adds nothing to the figure.
    let big = tempfile::NamedTempFile::new().unwrap();
    {
        let mut out = std::io::BufWriter::new(big.reopen().unwrap());
        out.write_all(b"\x89PNG\r\n\x1a\n").unwrap();
        let chunk = vec![0xA5u8; 1024 * 1024];
        for _ in 0..41 {
            out.write_all(&chunk).unwrap();
        }
        out.flush().unwrap();
    }
    let mut truncated_jpeg = jpeg(300, 200);
    truncated_jpeg.truncate(truncated_jpeg.len() * 6 / 10);
    let mut png_zip = png(32, 32);
    png_zip.extend_from_slice(b"PK\x03\x04\x14\x00 a zip archive appended to the image");
    let cases: Vec<(&str, Vec<u8>, &str)> =
        vec![
        ("bomb-20000x20000.png", png_bomb(20_000, 20_000), "image_too_large"),
        ("bomb-9000x9000.png", png_bomb(9_000, 9_000), "image_too_large"),
        ("truncated.jpg", truncated_jpeg, "corrupt_image"),
        (
            "drawing.svg",
            br#"<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>"#.to_vec(),
            "unsupported_image_type",
        ),
        (
            "page.png",
            b"\x89PNG\r\n\x1a\n<html><body><script>alert(document.cookie)</script></body></html>"
                .to_vec(),
            "corrupt_image",
        ),
        ("polyglot.png", png_zip, "polyglot_image"),
    ];

    reset_peak_rss();
    let baseline_kib = proc_status_kib("VmRSS:");
    let started = Instant::now();
    let mut refused = Vec::new();
    for round in 0..3 {
        for (name, bytes, expected) in &cases {
            let (code, body) =
                upload_one(&app, name, reqwest::multipart::Part::bytes(bytes.clone())).await;
            assert_eq!(code, 400, "{name}: {body}");
            assert_eq!(body["errors"][0]["code"], *expected, "{name}: {body}");
            if round == 0 {
                refused.push(format!("{name} -> {code} {expected}"));
            }
        }
        let file = tokio::fs::File::open(big.path()).await.unwrap();
        let size = file.metadata().await.unwrap().len();
        let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(file), size);
        let (code, body) = upload_one(&app, "huge-41MB.png", part).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["errors"][0]["code"], "file_too_large", "{body}");
        if round == 0 {
            refused.push(format!("huge-41MB.png -> {code} file_too_large"));
        }
    }
    // Eight bombs at once.
    let uploads: Vec<_> = (0..8)
        .map(|_| {
            upload_one(
                &app,
                "bomb.png",
                reqwest::multipart::Part::bytes(png_bomb(20_000, 20_000)),
            )
        })
        .collect();
    for (code, body) in futures::future::join_all(uploads).await {
        assert_eq!(code, 400, "{body}");
    }
    let peak_kib = proc_status_kib("VmHWM:");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    for line in &refused {
        println!("R9: {line}");
    }
    println!(
        "R9: {} hostile uploads refused with 400 in {:.1} s; peak memory growth {growth_mib:.1} MiB (baseline RSS {:.1} MiB, peak {:.1} MiB)",
        3 * (cases.len() + 1) + 8,
        started.elapsed().as_secs_f64(),
        baseline_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    // docs/SECURITY.md ("Uploads"): "hostile input costs a few megabytes at most" (measured 3.0–3.6 MiB).
    assert!(growth_mib < 16.0, "memory grew {growth_mib:.1} MiB");
    // Nothing of it reached the bucket: only the warm-up upload is there.
    assert_eq!(app.blobs.list("uploads").await.unwrap().len(), 1);
}
