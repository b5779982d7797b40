//! Outbound webhooks, signed per Standard Webhooks (<https://www.standardwebhooks.com/>).
//!
//! A task that asked for a webhook (its own `webhookUrl`, or its batch's) has a delivery row
//! written in the same transaction as the task. When the task is final, the delivery is
//! POSTed through the guarded [`Fetcher`] (same SSRF rules as every outbound request) with
//! `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`. The [`Deliverer`] makes one attempt and says how it went;
//! the engine's webhook lane claims due deliveries, runs each attempt as a job and retries
//! failures on the Standard Webhooks schedule ([`LATER_RETRIES`]) for about a day. The row
//! is the source of truth, so a restart resumes where it stopped.
//!
//! Secrets: each API key has its own `whsec_` secret, kept in the database by the key's
//! name (the task's owner) and made on first use ([`key_secret`]), so instances sharing the
//! database sign alike. A key reads it from `GET /api/webhook-secret` (or `darkroom keys
//! webhook-secret`) and replaces it with [`rotate_key_secret`]; for [`ROTATION_OVERLAP`]
//! after a rotation deliveries carry a second signature made with the old secret
//! (`v1,<new> v1,<old>`), so receivers can switch without dropping a message. Each attempt
//! reads the secret afresh, so a rotation takes effect at once on every instance. Tasks
//! without an owner (API keys off) are signed with the instance secret
//! (`DARKROOM_WEBHOOK_SECRET`, or generated once and kept in `<data_dir>/webhook_secret`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use sha2::Sha256;

use crate::net::{FetchError, Fetcher};
use crate::storage::{AccessRepo, Repo, RepoError, WebhookDelivery, WebhookSecretRecord};

pub use crate::domain::whsec::{SECRET_PREFIX, parse_secret};

/// Random bytes in a generated secret (Standard Webhooks: 24 to 64).
const GENERATED_SECRET_BYTES: usize = 32;
/// Waits after a failed attempt, after the first (configurable) one: the Standard Webhooks
/// schedule. Eight attempts in all ([`ATTEMPTS`]), over about 27 hours.
pub const LATER_RETRIES: [Duration; 6] = [
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Attempts in all: the first, after `first_retry`, and [`LATER_RETRIES`].
pub const ATTEMPTS: u32 = 2 + LATER_RETRIES.len() as u32;
/// How long a rotated-out key secret keeps signing deliveries beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// What a webhook POSTs when a task is final.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct WebhookPayload {
    /// `task.succeeded`, `task.failed`, `task.canceled` or `task.expired`.
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The task as `GET /api/tasks/{id}` shows it.
    pub data: crate::views::TaskView,
}

/// A fresh `whsec_<standard base64 of 32 random bytes>` secret.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
    format!("{SECRET_PREFIX}{}", BASE64.encode(bytes))
}

/// Why a delivery could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("reading the webhook secret failed: {0}")]
    Repo(#[from] RepoError),
    /// Only a hand-edited row can get here; the message names the problem, never the value.
    #[error("the stored webhook secret of key {owner:?} {problem}")]
    Unusable { owner: String, problem: String },
}

/// The webhook secret of the API key called `owner`, made and stored on first use (by
/// whichever instance gets there first; all of them then read the same one).
pub async fn key_secret(
    access: &dyn AccessRepo,
    owner: &str,
    now: i64,
) -> Result<WebhookSecretRecord, RepoError> {
    access.webhook_secret(owner, &generate_secret(), now).await
}

/// Gives the API key called `owner` a new webhook secret; the one it replaces keeps signing
/// (as a second signature) for [`ROTATION_OVERLAP`].
pub async fn rotate_key_secret(
    access: &dyn AccessRepo,
    owner: &str,
    now: i64,
) -> Result<WebhookSecretRecord, RepoError> {
    let overlap = i64::try_from(ROTATION_OVERLAP.as_millis()).unwrap_or(i64::MAX);
    access
        .rotate_webhook_secret(owner, &generate_secret(), now, now.saturating_add(overlap))
        .await
}

/// Signs webhook payloads with one secret.
#[derive(Clone)]
pub struct Signer {
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

impl Signer {
    pub fn new(secret: &str) -> Result<Self, String> {
        Ok(Self {
            key: Arc::new(parse_secret(secret)?),
        })
    }

    /// The configured secret, or the one kept in `<data_dir>/webhook_secret` (created
    /// with a fresh random secret, readable by the owner only, on first start).
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        if let Some(secret) = configured {
            return Self::new(secret).map_err(|p| anyhow::anyhow!("DARKROOM_WEBHOOK_SECRET {p}"));
        }
        let path = data_dir.join("webhook_secret");
        match std::fs::read_to_string(&path) {
            Ok(stored) => Self::new(stored.trim())
                .map_err(|p| anyhow::anyhow!("{}: the stored webhook secret {p}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = generate_secret();
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating {}", data_dir.display()))?;
                write_private(&path, &secret)
                    .with_context(|| format!("writing the webhook secret to {}", path.display()))?;
                tracing::info!(path = %path.display(), "generated a webhook signing secret");
                Self::new(&secret).map_err(|p| anyhow::anyhow!("generated secret {p}"))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes a key of any length; this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Secret(#[from] SecretError),
}

impl AttemptError {
    /// The receiver's answer, if one came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Fetch(FetchError::Status { status, .. }) => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again may help. A refused URL (private address, bad scheme) will not
    /// change; a secret that could not be read is retried like a failed POST.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Fetch(FetchError::Forbidden { .. }))
    }
}

/// How one delivery attempt went.
#[derive(Debug)]
pub enum Attempted {
    /// The receiver answered 2xx with this status.
    Delivered {
        status: u16,
    },
    Failed(AttemptError),
    /// The delivery's task is gone: there is nothing to send.
    TaskMissing,
}

/// Makes webhook delivery attempts: builds the payload, signs it, POSTs it.
pub struct Deliverer {
    repo: Arc<dyn Repo>,
    /// Where each API key's secret is kept.
    access: Arc<dyn AccessRepo>,
    fetcher: Fetcher,
    /// The instance secret: signs deliveries of tasks without an owner.
    signer: Signer,
    /// The wait before the first retry (`DARKROOM_WEBHOOK_FIRST_RETRY_MS`).
    pub first_retry: Duration,
}

impl Deliverer {
    pub fn new(
        repo: Arc<dyn Repo>,
        access: Arc<dyn AccessRepo>,
        fetcher: Fetcher,
        signer: Signer,
        first_retry: Duration,
    ) -> Self {
        Self {
            repo,
            access,
            fetcher,
            signer,
            first_retry,
        }
    }

    /// The `webhook-signature` value: signed with the secret of the task's owner and, while
    /// a rotation's overlap lasts, also with the one it replaced (`v1,<new> v1,<old>`);
    /// tasks without an owner are signed with the instance secret. The key's secret is read
    /// on every attempt (one lookup by primary key, small next to the POST), so a rotation
    /// counts at once here and on every other instance.
    async fn signature(
        &self,
        owner: Option<&str>,
        id: &str,
        timestamp: i64,
        body: &[u8],
        now: i64,
    ) -> Result<String, SecretError> {
        let Some(owner) = owner else {
            return Ok(self.signer.sign(id, timestamp, body));
        };
        let record = key_secret(self.access.as_ref(), owner, now).await?;
        let signer = |secret: &str| {
            Signer::new(secret).map_err(|problem| SecretError::Unusable {
                owner: owner.to_owned(),
                problem,
            })
        };
        let mut signature = signer(&record.secret)?.sign(id, timestamp, body);
        if let Some(previous) = record.previous_at(now) {
            signature.push(' ');
            signature.push_str(&signer(previous)?.sign(id, timestamp, body));
        }
        Ok(signature)
    }

    /// One attempt at `delivery` (already claimed), at `now`: the task as it is now,
    /// signed and POSTed.
    pub async fn attempt(
        &self,
        delivery: &WebhookDelivery,
        now: i64,
    ) -> Result<Attempted, RepoError> {
        let Some(task) = self.repo.get(&delivery.task_id).await? else {
            return Ok(Attempted::TaskMissing);
        };
        let timestamp = now / 1000;
        let body = WebhookPayload {
            kind: format!("task.{}", task.state.as_str()),
            timestamp: crate::clock::iso_time(now),
            data: crate::views::task_view(&task, None),
        };
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let result: Result<u16, AttemptError> = async {
            let signature = self
                .signature(task.owner.as_deref(), &delivery.id, timestamp, &body, now)
                .await?;
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            let values = [
                ("webhook-id", delivery.id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ];
            for (name, value) in values {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            Ok(self.fetcher.post(&delivery.url, headers, body).await?)
        }
        .await;
        Ok(match result {
            Ok(status) => Attempted::Delivered { status },
            Err(e) => Attempted::Failed(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification's reference tests.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert!(parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        assert!(parse_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(parse_secret("whsec_!!!").is_err());
        assert!(parse_secret("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let a = generate_secret();
        assert_eq!(parse_secret(&a).unwrap().len(), GENERATED_SECRET_BYTES);
        assert_ne!(a, generate_secret());
    }

    #[tokio::test]
    async fn deliveries_are_signed_with_the_owners_secret_and_both_during_rotation() {
        let repo = Arc::new(
            crate::storage::sqlite::SqliteRepo::in_memory()
                .await
                .unwrap(),
        );
        let fetcher =
            Fetcher::new(Vec::new(), Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let instance = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let deliverer = Deliverer::new(
            repo.clone(),
            repo.clone(),
            fetcher,
            instance.clone(),
            Duration::from_secs(1),
        );
        let sign = |secret: &str| Signer::new(secret).unwrap().sign("msg_1", 7, b"{}");
        let now = 1_000;

        let unowned = deliverer.signature(None, "msg_1", 7, b"{}", now).await;
        assert_eq!(unowned.unwrap(), instance.sign("msg_1", 7, b"{}"));

        let alice = key_secret(repo.as_ref(), "alice", now).await.unwrap();
        let signed = deliverer
            .signature(Some("alice"), "msg_1", 7, b"{}", now)
            .await
            .unwrap();
        assert_eq!(signed, sign(&alice.secret));
        let bob = deliverer
            .signature(Some("bob"), "msg_1", 7, b"{}", now)
            .await;
        assert_ne!(bob.unwrap(), signed, "every key has its own secret");

        let rotated = rotate_key_secret(repo.as_ref(), "alice", now)
            .await
            .unwrap();
        let during = deliverer
            .signature(Some("alice"), "msg_1", 7, b"{}", now + 1)
            .await
            .unwrap();
        assert_eq!(
            during,
            format!("{} {}", sign(&rotated.secret), sign(&alice.secret))
        );
        let overlap = i64::try_from(ROTATION_OVERLAP.as_millis()).unwrap();
        let after = deliverer
            .signature(Some("alice"), "msg_1", 7, b"{}", now + overlap)
            .await
            .unwrap();
        assert_eq!(after, sign(&rotated.secret), "the old secret stops signing");
    }

    #[test]
    fn a_generated_secret_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::load(None, dir.path()).unwrap();
        let b = Signer::load(None, dir.path()).unwrap();
        assert_eq!(a.sign("m", 1, b"x"), b.sign("m", 1, b"x"));
    }
}
