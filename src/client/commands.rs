//! `darkroom tasks list|show|cancel|retry|wait` and `darkroom batches show|zip`.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::{Map, Value, json};

use super::api::{Api, ClientError};
use super::follow::Snapshot;
use super::generate::{report, watch};
use super::{BatchesArgs, BatchesCommand, EXIT_OK, TasksArgs, TasksCommand, say};

fn api(connection: &super::Connection) -> Result<Api, ClientError> {
    Api::new(&connection.server, connection.key.clone())
}

/// A path segment from an id the user typed: ids are `tsk_`/`bat_` and hex, so anything
/// else would be refused by the server anyway; refusing it here keeps `/` and `?` out of
/// the path.
fn segment(id: &str) -> Result<&str, ClientError> {
    let id = id.trim();
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(ClientError::Usage(format!(
            "{id:?} is not a task or batch id"
        )))
    }
}

fn snapshot(view: &Value, api: &Api) -> Result<Snapshot, ClientError> {
    Snapshot::from_view(view).ok_or_else(|| ClientError::Protocol {
        url: api.server().to_owned(),
        reason: format!("not a task: {view}"),
    })
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or("")
}

fn print_json(value: &Value) {
    println!("{value}");
}

pub(super) async fn tasks(args: &TasksArgs) -> Result<u8, ClientError> {
    let api = api(&args.connection)?;
    let json = args.connection.json;
    match &args.command {
        TasksCommand::List {
            state,
            batch,
            limit,
            cursor,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (name, value) in [("state", state), ("batchId", batch), ("cursor", cursor)] {
                if let Some(value) = value {
                    query.push((name, value.clone()));
                }
            }
            let page = api
                .json(api.request(Method::GET, "api/tasks").query(&query))
                .await?;
            if json {
                print_json(&page);
                return Ok(EXIT_OK);
            }
            let tasks = page["tasks"].as_array().cloned().unwrap_or_default();
            if tasks.is_empty() {
                say("no tasks");
            }
            for task in &tasks {
                println!(
                    "{}\t{:<10}\t{}\t{}\t{}",
                    text(task, "taskId"),
                    text(task, "state"),
                    text(task, "provider"),
                    text(task, "createdAt"),
                    task["error"]["code"].as_str().unwrap_or("")
                );
            }
            if let Some(next) = page["nextCursor"].as_str() {
                say(&format!("more: darkroom tasks list --cursor {next}"));
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Show { id } => {
            let task = api.get(&format!("api/tasks/{}", segment(id)?)).await?;
            if json {
                print_json(&task);
            } else {
                print_task(&task);
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Cancel { id } => {
            let task = api
                .post(&format!("api/tasks/{}/cancel", segment(id)?), &json!({}))
                .await?;
            if json {
                print_json(&task);
            } else {
                println!("{} {}", text(&task, "taskId"), text(&task, "state"));
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Retry { id } => {
            let task = api
                .post(&format!("api/tasks/{}/retry", segment(id)?), &json!({}))
                .await?;
            if json {
                print_json(&task);
            } else {
                // The new id alone on stdout, for `$(darkroom tasks retry …)`.
                println!("{}", text(&task, "taskId"));
                say(&format!(
                    "retrying {} as the new task {} ({})",
                    text(&task, "retryOf"),
                    text(&task, "taskId"),
                    text(&task, "state")
                ));
            }
            Ok(EXIT_OK)
        }
        TasksCommand::Wait { ids, out, watching } => {
            let mut tasks = Vec::with_capacity(ids.len());
            for id in ids {
                // An unknown id is a 404 now rather than a wait that never ends.
                let view = api.get(&format!("api/tasks/{}", segment(id)?)).await?;
                tasks.push(snapshot(&view, &api)?);
            }
            let finished = watch(&api, tasks, out.as_deref(), watching, json).await?;
            Ok(report(Map::new(), &finished, watching, json))
        }
    }
}

fn print_task(task: &Value) {
    let mut lines: Vec<(&str, String)> = vec![
        ("task", text(task, "taskId").to_owned()),
        (
            "state",
            format!("{} ({})", text(task, "state"), text(task, "status")),
        ),
        (
            "provider",
            format!("{} ({})", text(task, "provider"), text(task, "model")),
        ),
        ("prompt", text(task, "prompt").to_owned()),
        ("source", text(task, "sourceKey").to_owned()),
    ];
    for (label, field) in [
        ("batch", "batchId"),
        ("retry of", "retryOf"),
        ("provider id", "providerTaskId"),
    ] {
        if let Some(value) = task[field].as_str() {
            lines.push((label, value.to_owned()));
        }
    }
    if let Some(position) = task["queuePosition"].as_u64() {
        lines.push(("queue", format!("{position} task(s) ahead")));
    }
    lines.push(("attempts", task["attempts"].to_string()));
    for url in task["resultUrls"].as_array().into_iter().flatten() {
        lines.push(("result", url.as_str().unwrap_or("").to_owned()));
    }
    if let Some(code) = task["error"]["code"].as_str() {
        let message = task["error"]["message"].as_str().unwrap_or("");
        lines.push(("error", format!("{code}: {message}")));
    }
    for (label, field) in [
        ("created", "createdAt"),
        ("submitted", "submittedAt"),
        ("completed", "completedAt"),
    ] {
        if let Some(value) = task[field].as_str() {
            lines.push((label, value.to_owned()));
        }
    }
    for (label, value) in lines {
        println!("{label:<12}{value}");
    }
}

pub(super) async fn batches(args: &BatchesArgs) -> Result<u8, ClientError> {
    let api = api(&args.connection)?;
    let json = args.connection.json;
    match &args.command {
        BatchesCommand::Show { id } => {
            let batch = api.get(&format!("api/batches/{}", segment(id)?)).await?;
            if json {
                print_json(&batch);
            } else {
                print_batch(&batch);
            }
            Ok(EXIT_OK)
        }
        BatchesCommand::Zip { id, out, wait } => {
            let id = segment(id)?;
            let to = out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("{id}.zip")));
            // The server refuses an unfinished batch (409 batch_not_finished, with the
            // counts); `?wait=true` makes it wait for the batch, a bounded while at a time.
            let path = if *wait {
                format!("api/batches/{id}/zip?wait=true")
            } else {
                format!("api/batches/{id}/zip")
            };
            let bytes = loop {
                match api.save(&path, &to).await {
                    Err(ClientError::Refused { code, .. })
                        if *wait && code == "batch_not_finished" =>
                    {
                        say("the batch is not finished yet; still waiting");
                    }
                    other => break other?,
                }
            };
            if json {
                print_json(&json!({"batchId": id, "file": to, "bytes": bytes}));
            } else {
                println!("{}", to.display());
                say(&format!("{bytes} bytes"));
            }
            Ok(EXIT_OK)
        }
    }
}

fn print_batch(batch: &Value) {
    let counts: Vec<String> = batch["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    let done = if batch["done"] == json!(true) {
        "yes"
    } else {
        "no"
    };
    println!("{:<10}{}", "batch", text(batch, "batchId"));
    println!("{:<10}{}", "prompt", text(batch, "prompt"));
    println!(
        "{:<10}{} (submitted {}), done: {done}",
        "tasks", batch["total"], batch["submitted"]
    );
    println!("{:<10}{}", "counts", counts.join(", "));
    println!("{:<10}{}", "credits", batch["credits"]);
    println!("{:<10}{}", "created", text(batch, "createdAt"));
    for task in batch["tasks"].as_array().into_iter().flatten() {
        println!(
            "{}\t{:<10}\t{}",
            text(task, "taskId"),
            text(task, "state"),
            task["error"]["code"].as_str().unwrap_or("")
        );
    }
}
