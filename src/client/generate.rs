//! `darkroom generate`: upload local files, submit one task per image (or one batch),
//! follow the tasks with progress bars, download the results; and the following,
//! downloading and reporting that `darkroom tasks wait` shares.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::api::{Api, ClientError};
use super::follow::{Follow, Snapshot};
use super::progress::Progress;
use super::{EXIT_OK, EXIT_TASK_FAILED, GenerateArgs, Watching, say};
use crate::domain::TaskState;
use crate::domain::request::MAX_SOURCES;

pub(super) async fn run(args: &GenerateArgs) -> Result<u8, ClientError> {
    let api = Api::new(&args.connection.server, args.connection.key.clone())?;
    if args.batch && args.images.len() > MAX_SOURCES {
        return Err(ClientError::Usage(format!(
            "a batch takes at most {MAX_SOURCES} images; without --batch they are submitted {MAX_SOURCES} at a time"
        )));
    }
    let mut files = Vec::new();
    for image in args.images.iter().filter(|i| !is_url(i)) {
        if !Path::new(image).is_file() {
            return Err(ClientError::Usage(format!(
                "{image} is neither a readable file nor an http(s) URL"
            )));
        }
        files.push(PathBuf::from(image));
    }
    make_dir(&args.out)?;
    let mut uploaded = api.upload(&files).await?.into_iter();
    // Each image in the order given: an upload entry or an image URL.
    let sources: Vec<(bool, Value)> = args
        .images
        .iter()
        .map(|image| {
            if is_url(image) {
                (false, json!(image))
            } else {
                let u = uploaded.next().unwrap_or_default();
                (true, json!({"key": u["key"], "url": u["url"]}))
            }
        })
        .collect();
    let mut batch_id = None;
    let mut submitted = Vec::new();
    // A request takes at most MAX_SOURCES images: more are submitted in turns.
    for chunk in sources.chunks(MAX_SOURCES) {
        let mut body = json!({"prompt": args.prompt});
        let pick = |upload: bool| -> Vec<Value> {
            chunk
                .iter()
                .filter(|(u, _)| *u == upload)
                .map(|(_, v)| v.clone())
                .collect()
        };
        for (field, values) in [("uploads", pick(true)), ("imageUrls", pick(false))] {
            if !values.is_empty() {
                body[field] = values.into();
            }
        }
        for (field, value) in [
            ("provider", &args.provider),
            ("aspectRatio", &args.aspect_ratio),
            ("outputFormat", &args.format),
        ] {
            if let Some(value) = value {
                body[field] = json!(value);
            }
        }
        let (batch, tasks) = submit(&api, args, &body).await?;
        batch_id = batch_id.or(batch);
        submitted.extend(tasks);
    }
    let json = args.connection.json;
    if !json {
        match &batch_id {
            Some(batch) => say(&format!("batch {batch}: {} task(s)", submitted.len())),
            None => say(&format!("{} task(s) submitted", submitted.len())),
        }
    }
    let finished = watch(&api, submitted, Some(&args.out), &args.watching, json).await?;
    let mut extra = Map::new();
    extra.insert("batchId".into(), json!(batch_id));
    Ok(report(extra, &finished, &args.watching, json))
}

fn is_url(image: &str) -> bool {
    image.starts_with("http://") || image.starts_with("https://")
}

/// One request (`/api/generate`, or `/api/batches` with `--batch`): the batch id and the
/// tasks it made, with their providers.
async fn submit(
    api: &Api,
    args: &GenerateArgs,
    body: &Value,
) -> Result<(Option<String>, Vec<Snapshot>), ClientError> {
    let path = if args.batch {
        "api/batches"
    } else {
        "api/generate"
    };
    let answer = api.post(path, body).await?;
    let batch_id = answer["batchId"].as_str().map(str::to_owned);
    // `/api/generate` names each task's provider; for a batch, its view does.
    let tasks = match &batch_id {
        Some(batch) => api.get(&format!("api/batches/{batch}")).await?["tasks"].take(),
        None => answer["tasks"].clone(),
    };
    let providers: Vec<(&str, Option<&str>)> = tasks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["taskId"].as_str()?, t["provider"].as_str())))
        .collect();
    let submitted: Vec<Snapshot> = answer["taskIds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|id| {
            let provider = providers
                .iter()
                .find(|(t, _)| *t == id)
                .and_then(|(_, p)| *p);
            Snapshot::submitted(id, provider.or(args.provider.as_deref()))
        })
        .collect();
    if submitted.is_empty() {
        return Err(ClientError::Protocol {
            url: api.url(path).to_string(),
            reason: format!("no taskIds in {answer}"),
        });
    }
    Ok((batch_id, submitted))
}

fn make_dir(dir: &Path) -> Result<(), ClientError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ClientError::Local(format!("cannot make {}: {e}", dir.display())))
}

/// A task as the client left it: its last known state and the files it downloaded.
pub(super) struct Finished {
    pub snapshot: Snapshot,
    pub files: Vec<PathBuf>,
}

/// Follows the tasks with progress bars until final (or `--timeout`), then downloads the
/// results of each succeeded task into `out` when given.
pub(super) async fn watch(
    api: &Api,
    tasks: Vec<Snapshot>,
    out: Option<&Path>,
    watching: &Watching,
    json: bool,
) -> Result<Vec<Finished>, ClientError> {
    let ids: Vec<String> = tasks.iter().map(|s| s.task_id.clone()).collect();
    let progress = Progress::new(&ids, !json);
    for task in &tasks {
        progress.update(task);
    }
    let follow = Follow {
        api,
        poll_only: watching.poll,
        deadline: watching
            .timeout
            .map(|secs| Instant::now() + Duration::from_secs(secs)),
    };
    let snapshots = follow.run(tasks, |s| progress.update(s)).await;
    let snapshots = match snapshots {
        Ok(snapshots) => snapshots,
        Err(e) => {
            progress.finish();
            return Err(e);
        }
    };
    let mut finished = Vec::with_capacity(snapshots.len());
    for snapshot in snapshots {
        let mut files = Vec::new();
        if let Some(dir) = out.filter(|_| snapshot.state == TaskState::Succeeded) {
            make_dir(dir)?;
            for (n, url) in snapshot.result_urls.iter().enumerate() {
                progress.note(
                    &snapshot.task_id,
                    format!("downloading {}/{}", n + 1, snapshot.result_urls.len()),
                );
                let stem = format!("{}-{n}", snapshot.task_id);
                match api.download(url, dir, &stem).await {
                    Ok(file) => files.push(file),
                    Err(e) => {
                        progress.finish();
                        return Err(e);
                    }
                }
            }
            progress.note(
                &snapshot.task_id,
                format!("succeeded, {} file(s)", files.len()),
            );
        }
        finished.push(Finished { snapshot, files });
    }
    progress.finish();
    Ok(finished)
}

/// Why a task did not succeed, in one line naming it, its error code and message.
pub(super) fn reason(snapshot: &Snapshot, watching: &Watching) -> Option<String> {
    let id = &snapshot.task_id;
    let state = snapshot.state;
    match state {
        TaskState::Succeeded => None,
        TaskState::Failed | TaskState::Canceled | TaskState::Expired => Some(format!(
            "task {id} {state}: {}: {}",
            snapshot.error_code.as_deref().unwrap_or(state.as_str()),
            snapshot.error.as_deref().unwrap_or("no reason given")
        )),
        _ => Some(format!(
            "task {id} not final after {} s: still {state} (darkroom tasks wait {id})",
            watching.timeout.unwrap_or_default()
        )),
    }
}

/// The task as `--json` reports it.
pub(super) fn task_json(finished: &Finished) -> Value {
    let s = &finished.snapshot;
    json!({
        "taskId": s.task_id,
        "state": s.state,
        "provider": s.provider,
        "resultUrls": s.result_urls,
        "error": s.error_code.as_ref().map(|code| json!({"code": code, "message": s.error})),
        "files": finished.files,
    })
}

/// Prints the outcome (the files on stdout and a reason per unsuccessful task on stderr,
/// or one JSON document) and returns the exit code: 0 only if every task succeeded.
pub(super) fn report(
    mut document: Map<String, Value>,
    finished: &[Finished],
    watching: &Watching,
    json: bool,
) -> u8 {
    let reasons: Vec<String> = finished
        .iter()
        .filter_map(|f| reason(&f.snapshot, watching))
        .collect();
    let succeeded = finished.len() - reasons.len();
    if json {
        document.insert(
            "tasks".into(),
            finished.iter().map(task_json).collect::<Vec<_>>().into(),
        );
        document.insert("succeeded".into(), succeeded.into());
        document.insert("failed".into(), reasons.len().into());
        println!("{}", Value::Object(document));
    } else {
        for file in finished.iter().flat_map(|f| &f.files) {
            println!("{}", file.display());
        }
    }
    for reason in &reasons {
        say(reason);
    }
    if !json {
        say(&format!(
            "{succeeded} of {} task(s) succeeded",
            finished.len()
        ));
    }
    if reasons.is_empty() {
        EXIT_OK
    } else {
        EXIT_TASK_FAILED
    }
}
