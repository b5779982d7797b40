//! Callback delivery in KIE's exact body format, optionally HMAC-signed, with the
//! dropped, late and duplicated callback faults.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::admission::Faults;
use super::stats::Counters;
use super::store::{Task, TaskState, View, task_data};
use super::{KieSim, url_host};

/// KIE documents a 15 s callback timeout for its other APIs.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(15);

const SUCCESS_CALLBACK_MSG: &str = "Playground task completed successfully.";
const FAILURE_CALLBACK_MSG: &str = "Playground task failed.";

pub(super) const TIMESTAMP_HEADER: &str = "X-Webhook-Timestamp";
pub(super) const SIGNATURE_HEADER: &str = "X-Webhook-Signature";

pub(super) type HmacSha256 = Hmac<Sha256>;

impl KieSim {
    pub(super) async fn deliver_callbacks(
        &self,
        task_id: &str,
        url: &str,
        payload: &Value,
        faults: Faults,
    ) {
        if faults.drop_callback {
            Counters::bump(&self.counters.dropped);
            tracing::info!(task_id = %task_id, "kie-sim callback dropped (fault injection)");
            return;
        }
        let body = match serde_json::to_vec(payload) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                tracing::error!(task_id = %task_id, error = %err, "kie-sim could not serialise a callback");
                return;
            }
        };
        if !faults.late.is_zero() {
            tokio::time::sleep(faults.late).await;
        }
        let duplicates = u64::from(faults.deliveries.saturating_sub(1));
        self.counters
            .duplicates_sent
            .fetch_add(duplicates, Ordering::Relaxed);
        self.counters
            .callbacks_sent
            .fetch_add(u64::from(faults.deliveries), Ordering::Relaxed);
        if self.config.concurrent_duplicates {
            let deliveries = (1..=faults.deliveries)
                .map(|delivery| self.post_callback(task_id, url, body.clone(), delivery));
            futures::future::join_all(deliveries).await;
        } else {
            // One after another: a duplicate racing its original is the other mode.
            for delivery in 1..=faults.deliveries {
                self.post_callback(task_id, url, body.clone(), delivery)
                    .await;
            }
        }
    }

    pub(super) async fn post_callback(&self, task_id: &str, url: &str, body: Bytes, delivery: u32) {
        let host = url_host(url);
        let client = match self.http() {
            Ok(client) => client,
            Err(err) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, error = %err, "kie-sim callback not sent");
                return;
            }
        };
        let mut request = client
            .post(url)
            .timeout(CALLBACK_TIMEOUT)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.config.hmac_key {
            let timestamp = chrono::Utc::now().timestamp();
            request = request
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, webhook_signature(key, task_id, timestamp));
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                Counters::bump(&self.counters.callbacks_delivered);
                tracing::debug!(task_id = %task_id, %host, delivery, "kie-sim callback delivered");
            }
            Ok(response) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, %host, delivery, status = response.status().as_u16(), "kie-sim callback rejected");
            }
            Err(err) => {
                Counters::bump(&self.counters.callback_failures);
                tracing::warn!(task_id = %task_id, %host, delivery, error = %err.without_url(), "kie-sim callback failed");
            }
        }
    }
}

/// A callback body in KIE's exact shape.
pub(super) fn callback_body(task_id: &str, task: &Task, remained_credits: u64) -> Value {
    let (code, msg) = if task.state == TaskState::Success {
        (200, SUCCESS_CALLBACK_MSG)
    } else {
        (501, FAILURE_CALLBACK_MSG)
    };
    json!({
        "code": code,
        "msg": msg,
        "data": task_data(task_id, task, remained_credits, View::Callback),
    })
}

/// `base64(HMAC-SHA256(key, taskId + "." + timestamp))`, as KIE signs callbacks.
fn webhook_signature(key: &str, task_id: &str, timestamp: i64) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}
