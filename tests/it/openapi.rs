//! The OpenAPI document: generated from the code, served, matching the committed copy
//! (`docs/openapi.json`; `UPDATE_OPENAPI=1 cargo test --test it openapi::` rewrites it), every
//! documented operation routed, and the Swagger UI page served from the binary.

use crate::harness::spawn_app;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

#[tokio::test]
async fn served_document_matches_the_committed_copy() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (code, served) = app.get_json("/api/openapi.json").await;
    assert_eq!(code, 200);
    assert_eq!(served["openapi"], "3.1.0");
    for path in [
        "/api/upload",
        "/api/generate",
        "/api/task-status",
        "/api/events",
        "/api/ws",
        "/api/tasks/{id}/wait",
        "/api/batches",
        "/api/batches/{id}/zip",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is described");
    }
    assert!(served["webhooks"]["taskFinished"]["post"].is_object());
    let pretty = serde_json::to_string_pretty(&served).unwrap() + "\n";
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    if std::env::var("UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/docs")).unwrap();
        std::fs::write(committed_path, &pretty).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path).expect("docs/openapi.json exists");
    assert!(
        committed == pretty,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test --test it openapi::"
    );
}

/// Every `$ref` in the document names a schema it defines.
#[tokio::test]
async fn every_reference_resolves() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (_, doc) = app.get_json("/api/openapi.json").await;
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "the document uses its components");
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "$ref {r} has no schema");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// The document lists no operation the server does not have: each documented method and
/// path (path parameters filled with junk) reaches a handler, never the router's own
/// 404 or 405. (The other direction holds by construction: documented routes are mounted
/// from their `#[utoipa::path]` attribute.)
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let (_, doc) = app.get_json("/api/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    "x"
                } else {
                    segment
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            if !item[method].is_object() {
                continue;
            }
            let request = app
                .http
                .request(method.to_uppercase().parse().unwrap(), app.url(&concrete))
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            // Streams (`/api/events`) stay open: only JSON answers are read.
            let is_json = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            let body: Value = if is_json {
                response.json().await.unwrap_or(Value::Null)
            } else {
                Value::Null
            };
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert_ne!(
                body["code"], "route_not_found",
                "{method} {path} is documented but not routed"
            );
            checked += 1;
        }
    }
    assert!(checked >= 22, "checked {checked} operations");
}

/// Swagger UI is served from the binary, pointed at our document, with the validator badge
/// (the one thing that would call another host) off and a CSP that lets nothing else in.
#[tokio::test]
async fn docs_page_is_served_from_the_binary() {
    let app = spawn_app(&[("DARKROOM_WORKERS", "false")]).await;
    let page = app.http.get(app.url("/api/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.url().path().ends_with("/api/docs/"), "{}", page.url());
    let csp = page
        .headers()
        .get("content-security-policy")
        .expect("the docs page has a CSP")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("connect-src 'self'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui"), "Swagger UI's page");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page names no other host"
    );
    let init = app
        .http
        .get(app.url("/api/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let init = init.text().await.unwrap();
    assert!(init.contains("/api/openapi.json"), "{init}");
    assert!(
        init.contains("\"validatorUrl\": \"none\"") || init.contains("\"validatorUrl\":\"none\"")
    );
    for asset in ["swagger-ui.css", "swagger-ui-bundle.js"] {
        let response = app
            .http
            .get(app.url(&format!("/api/docs/{asset}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.unwrap().len() > 1000, "{asset}");
    }
}

/// `model` lists the Gemini model this instance is configured with.
#[tokio::test]
async fn the_model_list_follows_the_configuration() {
    let app = spawn_app(&[
        ("DARKROOM_WORKERS", "false"),
        ("DARKROOM_GEMINI_MODEL", "gemini-9-test-image"),
    ])
    .await;
    let (_, doc) = app.get_json("/api/openapi.json").await;
    // GenerateBody is allOf [the fields, "at least one source"].
    let models =
        &doc["components"]["schemas"]["GenerateBody"]["allOf"][0]["properties"]["model"]["enum"];
    let models: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        models,
        [
            "google/nano-banana-edit",
            "nano-banana-edit",
            "gemini-9-test-image"
        ]
    );
}

#[test]
fn the_api_page_lists_every_error_code_of_the_catalogue_and_no_other() {
    use darkroom::domain::ErrorCode;
    let page = include_str!("../../docs/API.md");
    let start = page
        .find("\n## Error codes\n")
        .expect("docs/API.md has an Error codes section");
    let section = &page[start + 1..];
    // The section ends at the next heading of its level or above.
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let listed: Vec<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .collect();
    for code in ErrorCode::ALL {
        let row = format!("| `{}` | {} |", code.as_str(), code.status());
        assert!(section.contains(&row), "docs/API.md lacks the row {row}");
    }
    for code in &listed {
        assert!(
            ErrorCode::parse(code).is_some(),
            "docs/API.md lists {code}, which is not in the catalogue"
        );
    }
    assert_eq!(listed.len(), ErrorCode::ALL.len());
}
