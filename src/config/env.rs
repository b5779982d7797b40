//! The environment as a configuration source: every key's variables from
//! [`KEYS`](super::keys::KEYS), the original's `R2_*` group, and the warning list of
//! `DARKROOM_*` variables nobody reads.

use std::collections::HashMap;

use url::Url;

use super::keys::{CLIENT_VARS, CONFIG_FILE_VAR, KEYS, S3_KEYS};
use super::types::{Raw, Secret, parse_http_url};
use super::{Config, ConfigError, S3Config, invalid};

/// A variable's value, trimmed; empty counts as unset.
fn get<'a>(env: &'a HashMap<String, String>, var: &str) -> Option<&'a str> {
    env.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
}

/// Sets every key whose variable is set. Aliases are read first, so a key's own name wins.
pub(super) fn apply(config: &mut Config, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    for key in KEYS {
        for var in key.env.iter().rev() {
            if let Some(raw) = get(env, var) {
                (key.set)(config, Raw::Text(raw), Some(var)).map_err(|p| invalid(var, p))?;
            }
        }
    }
    apply_r2(config, env)
}

/// The original service's R2 variables: an account id gives Cloudflare's endpoint;
/// `R2_ENDPOINT` points the same variables at any S3-compatible server. Any of them set
/// means all the required ones must be.
fn apply_r2(config: &mut Config, env: &HashMap<String, String>) -> Result<(), ConfigError> {
    // R2_REGION alone (it has a default) does not ask for a bucket.
    let any_set = S3_KEYS
        .iter()
        .flat_map(|(_, vars)| vars.iter())
        .filter(|var| **var != "R2_REGION")
        .any(|var| get(env, var).is_some());
    if !any_set {
        return Ok(());
    }
    let endpoint = match (get(env, "R2_ENDPOINT"), get(env, "R2_ACCOUNT_ID")) {
        (Some(endpoint), _) => parse_http_url(endpoint).map_err(|p| invalid("R2_ENDPOINT", p))?,
        (None, Some(account)) => {
            if !account.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "R2_ACCOUNT_ID",
                    format!("= {account:?} is not a Cloudflare account id"),
                ));
            }
            Url::parse(&format!("https://{account}.r2.cloudflarestorage.com"))
                .map_err(|e| invalid("R2_ACCOUNT_ID", e.to_string()))?
        }
        (None, None) => {
            return Err(invalid(
                "R2_ACCOUNT_ID",
                "is not set; set it (or R2_ENDPOINT) together with the other R2_* variables",
            ));
        }
    };
    let required = |var: &str| {
        get(env, var)
            .map(str::to_owned)
            .ok_or_else(|| invalid(var, "is not set, but other R2_* variables are"))
    };
    config.storage.s3 = Some(S3Config {
        endpoint,
        region: get(env, "R2_REGION").unwrap_or("auto").to_owned(),
        bucket: required("R2_BUCKET_NAME")?,
        access_key_id: required("R2_ACCESS_KEY_ID")?,
        secret_access_key: Secret::new(required("R2_SECRET_ACCESS_KEY")?),
    });
    Ok(())
}

/// Every `DARKROOM_*` variable darkroom reads.
pub(super) fn known_darkroom_vars() -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .flat_map(|key| key.env.iter().copied())
        .chain([CONFIG_FILE_VAR])
        .chain(CLIENT_VARS)
        .filter(|var| var.starts_with("DARKROOM_"))
}

/// Variables that look like ours but are not read, sorted.
pub(super) fn unknown_darkroom_vars(env: &HashMap<String, String>) -> Vec<String> {
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|k| k.starts_with("DARKROOM_") && !known_darkroom_vars().any(|v| v == k.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    unknown
}
