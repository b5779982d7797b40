//! One contract suite for every bucket backend (local directory, memory, S3 through the
//! test S3 server), the original's full path with the bucket on S3, and start-up checks.

use std::time::{Duration, Instant};

use crate::harness::{new_s3_bucket, png, s3_env, s3_url, spawn_app};
use bytes::Bytes;
use darkroom::config::{S3Config, Secret};
use darkroom::storage::BlobStore;
use darkroom::storage::blob::Created;
use darkroom::storage::keys::ObjectSpec;
use serde_json::json;
use url::Url;

fn server() -> Url {
    Url::parse("http://127.0.0.1:9/").unwrap()
}

fn s3_config(bucket: &str) -> S3Config {
    S3Config {
        endpoint: Url::parse(&s3_url()).unwrap(),
        region: "us-east-1".to_owned(),
        bucket: bucket.to_owned(),
        access_key_id: "testing".to_owned(),
        secret_access_key: Secret::new("testing"),
    }
}

/// Every backend, fresh and empty. The temp dir lives as long as the returned guard.
async fn backends() -> (Vec<(&'static str, BlobStore)>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let local = BlobStore::local(dir.path(), server()).unwrap();
    let memory = BlobStore::memory(server());
    let s3 = BlobStore::s3_bucket(&s3_config(&new_s3_bucket().await), server()).unwrap();
    (vec![("local", local), ("memory", memory), ("s3", s3)], dir)
}

fn spec(key: &str) -> ObjectSpec {
    ObjectSpec {
        key: key.to_owned(),
        content_type: "image/png",
        cache_control: "no-cache",
    }
}

#[tokio::test]
async fn put_get_and_list_under_prefixes() {
    let (backends, _dir) = backends().await;
    for (name, blobs) in backends {
        for key in [
            "uploads/a.png",
            "uploads/b.png",
            "generated/kie-x-0.png",
            "kie-tasks/x.json",
        ] {
            blobs
                .put(&spec(key), Bytes::from(key.as_bytes().to_vec()))
                .await
                .unwrap();
        }
        assert_eq!(
            blobs.list("uploads").await.unwrap(),
            ["uploads/a.png", "uploads/b.png"],
            "{name}"
        );
        assert_eq!(
            blobs.list("generated").await.unwrap(),
            ["generated/kie-x-0.png"],
            "{name}"
        );
        assert_eq!(
            &blobs.get_bytes("kie-tasks/x.json").await.unwrap()[..],
            b"kie-tasks/x.json",
            "{name}"
        );
        assert!(blobs.exists("uploads/a.png").await.unwrap(), "{name}");
        assert!(!blobs.exists("uploads/none.png").await.unwrap(), "{name}");
        // Overwrite replaces.
        blobs
            .put(&spec("uploads/a.png"), Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(
            &blobs.get_bytes("uploads/a.png").await.unwrap()[..],
            b"new",
            "{name}"
        );
        assert!(matches!(
            blobs.get("uploads/none.png").await,
            Err(darkroom::storage::BlobError::NotFound(_))
        ));
    }
}

#[tokio::test]
async fn create_only_writes_keep_the_first_object() {
    let (backends, _dir) = backends().await;
    for (name, blobs) in backends {
        let key = spec("generated/kie-t-0.png");
        assert_eq!(
            blobs
                .put_create(&key, Bytes::from_static(b"first"))
                .await
                .unwrap(),
            Created::Written,
            "{name}"
        );
        assert_eq!(
            blobs
                .put_create(&key, Bytes::from_static(b"second"))
                .await
                .unwrap(),
            Created::AlreadyExisted,
            "{name}"
        );
        assert_eq!(
            &blobs.get_bytes(&key.key).await.unwrap()[..],
            b"first",
            "{name}"
        );
    }
}

#[tokio::test]
async fn sixteen_concurrent_writers_of_one_key_have_exactly_one_winner() {
    let (backends, _dir) = backends().await;
    for (name, blobs) in backends {
        let key = spec("generated/kie-race-0.png");
        let writers = (0..16u8).map(|i| {
            let blobs = blobs.clone();
            let key = key.clone();
            tokio::spawn(async move {
                (
                    i,
                    blobs
                        .put_create(&key, Bytes::from(vec![i; 1024]))
                        .await
                        .unwrap(),
                )
            })
        });
        let results: Vec<(u8, Created)> = futures::future::join_all(writers)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let winners: Vec<u8> = results
            .iter()
            .filter(|(_, c)| *c == Created::Written)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "{name}: {results:?}");
        let stored = blobs.get_bytes(&key.key).await.unwrap();
        assert_eq!(
            &stored[..],
            &vec![winners[0]; 1024][..],
            "{name}: the winner's bytes are stored"
        );
        println!(
            "{name}: 16 concurrent create-only writers, 1 winner (writer {})",
            winners[0]
        );
    }
}

#[tokio::test]
async fn keys_with_unicode_round_trip() {
    let (backends, _dir) = backends().await;
    for (name, blobs) in backends {
        let key = "uploads/été-фото-🙂.png";
        blobs
            .put(&spec(key), Bytes::from_static(b"u"))
            .await
            .unwrap();
        assert_eq!(blobs.list("uploads").await.unwrap(), [key], "{name}");
        assert_eq!(&blobs.get_bytes(key).await.unwrap()[..], b"u", "{name}");
    }
}

#[tokio::test]
async fn presigned_urls_open_without_credentials() {
    let (backends, _dir) = backends().await;
    for (name, blobs) in backends {
        blobs
            .put(&spec("uploads/p.png"), Bytes::from(png(5, 5)))
            .await
            .unwrap();
        let signed = blobs
            .presigned_get("uploads/p.png", Duration::from_secs(300))
            .await;
        if name != "s3" {
            assert!(signed.is_err(), "{name} cannot sign");
            continue;
        }
        let url = signed.unwrap();
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(&response.bytes().await.unwrap()[..], &png(5, 5)[..]);
    }
}

#[tokio::test]
async fn the_full_path_with_the_bucket_on_s3_writes_nothing_locally() {
    let bucket = new_s3_bucket().await;
    let env = s3_env(&bucket);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(&env).await;
    let (_, info) = app.get_json("/api/info").await;
    assert_eq!(info["storage"], "s3");
    let ids = app
        .generate_from_upload(2, json!({"outputFormat": "jpeg"}))
        .await;
    for id in &ids {
        let status = app.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(status["status"], "completed", "{status}");
        // The result URL opens through darkroom, streamed from S3.
        let url = status["resultUrls"][0].as_str().unwrap();
        let response = app.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/jpeg");
        image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    }
    let all = app.blobs.list("").await.unwrap();
    assert_eq!(
        all.iter().filter(|k| k.starts_with("uploads/")).count(),
        2,
        "{all:?}"
    );
    for id in &ids {
        assert!(
            all.contains(&format!("generated/kie-{id}-0.jpg")),
            "{all:?}"
        );
        assert!(all.contains(&format!("kie-tasks/{id}.json")), "{all:?}");
    }
    // A bucket outside darkroom's view has the same objects: the store is really S3.
    let direct = BlobStore::s3_bucket(&s3_config(&bucket), server()).unwrap();
    assert_eq!(direct.list("").await.unwrap(), all);
    assert!(
        !app.dir.path().join("bucket").exists(),
        "nothing may be written to a local bucket"
    );
}

#[tokio::test]
async fn presigned_mode_redirects_and_inputs_reach_the_provider_presigned() {
    let bucket = new_s3_bucket().await;
    let mut env = s3_env(&bucket);
    env.push(("DARKROOM_URL_MODE", "presigned".to_owned()));
    env.push(("DARKROOM_INPUT_MODE", "presigned".to_owned()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(&env).await;
    let ids = app.generate_from_upload(1, json!({})).await;
    let status = app.wait_final(&ids[0], Duration::from_secs(30)).await;
    assert_eq!(status["status"], "completed", "{status}");
    let url = status["resultUrls"][0].as_str().unwrap();
    let no_redirects = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects.get(url).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&s3_url()) && location.contains("X-Amz-Signature"),
        "{location}"
    );
    // Followed, it opens.
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
}

#[tokio::test]
async fn inputs_can_go_through_the_providers_file_upload_api() {
    let app = spawn_app(&[("DARKROOM_INPUT_MODE", "kie-upload")]).await;
    let ids = app.generate_from_upload(2, json!({})).await;
    for id in &ids {
        assert_eq!(
            app.wait_final(id, Duration::from_secs(30)).await["status"],
            "completed"
        );
    }
    assert_eq!(app.sim.clone().unwrap().stats().uploads, 2);
}

#[tokio::test]
async fn start_up_fails_fast_naming_endpoint_and_bucket() {
    use std::collections::HashMap;
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_url = format!("http://{dead}");
    let missing = format!("no-such-bucket-{}", uuid::Uuid::now_v7().simple());
    for (endpoint, bucket) in [
        (dead_url.clone(), "images".to_owned()),
        (s3_url(), missing.clone()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut env: HashMap<String, String> = s3_env(&bucket)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        env.insert("R2_ENDPOINT".into(), endpoint.clone());
        env.insert("DARKROOM_DATA_DIR".into(), dir.path().display().to_string());
        let config = darkroom::config::Config::from_env(&env).unwrap();
        let started = Instant::now();
        let error = match darkroom::App::build(config, "127.0.0.1:0".parse().unwrap()).await {
            Ok(_) => panic!("start-up must fail for {endpoint} / {bucket}"),
            Err(e) => format!("{e:#}"),
        };
        let took = started.elapsed();
        assert!(
            error.contains(&bucket) && error.contains(endpoint.trim_end_matches('/')),
            "{error}"
        );
        assert!(error.contains("not reachable or not writable"), "{error}");
        assert!(took < Duration::from_secs(30), "took {took:?}");
        println!("start-up refused in {} ms: {error}", took.as_millis());
    }
}

#[tokio::test]
async fn unicode_file_names_never_reach_the_key() {
    let app = spawn_app(&[]).await;
    let (code, body) = app
        .upload(&[
            ("фото 🙂 été.png", png(8, 8)),
            ("../../evil.png", png(4, 4)),
        ])
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["uploaded"][0]["filename"], "фото 🙂 été.png");
    for uploaded in body["uploaded"].as_array().unwrap() {
        let key = uploaded["key"].as_str().unwrap();
        assert!(
            key.starts_with("uploads/") && key.is_ascii() && !key.contains(".."),
            "{key}"
        );
        let response = app
            .http
            .get(uploaded["url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
