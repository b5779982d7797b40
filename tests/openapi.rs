//! The OpenAPI document: served, offline docs page, and the committed copy
//! (`docs/openapi.json`) matches. `UPDATE_OPENAPI=1 cargo test --test openapi` rewrites it.

mod common;

use common::spawn_app;

#[tokio::test]
async fn served_document_matches_the_committed_copy() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (code, served) = app.get_json("/api/openapi.json").await;
    assert_eq!(code, 200);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/api/events",
        "/api/ws",
        "/api/tasks/{id}/wait",
        "/api/batches",
        "/api/batches/{id}/zip",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is described");
    }
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).unwrap();
        std::fs::write(committed_path, &pretty).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).expect("docs/openapi.json exists");
    assert!(
        committed == pretty,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test --test openapi"
    );

    // The docs page is served from the binary and loads nothing from another host.
    let page = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external URL"
    );
    let script = app
        .http
        .get(app.url("/assets/docs.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    let script = script.text().await.unwrap();
    assert!(!script.contains("http://") && !script.contains("https://"));
}
