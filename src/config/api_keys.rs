//! API keys given in the configuration (`DARKROOM_API_KEYS=name:key,…`): parsed and
//! checked here; the key itself never reaches a message.

use super::{Config, ConfigError, Secret, invalid, keys};

impl Config {
    /// The `name:key` pairs of `auth.api_keys`, checked: names are 1–64 letters, digits,
    /// `-`, `_` or `.`, unique; keys are at least 16 characters.
    pub fn configured_api_keys(&self) -> Result<Vec<(String, Secret)>, ConfigError> {
        api_key_pairs(&self.auth.api_keys)
            .map_err(|p| invalid(&keys::key("auth.api_keys").label(), p))
    }
}

/// Splits `name:key` entries; the key itself never reaches a message.
pub(super) fn api_key_pairs(entries: &[Secret]) -> Result<Vec<(String, Secret)>, String> {
    let mut pairs: Vec<(String, Secret)> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Some((name, key)) = entry.expose().split_once(':') else {
            return Err(format!("entry {} must be name:key", i + 1));
        };
        let name = name.trim();
        if !is_key_name(name) {
            return Err(format!(
                "entry {}: the name must be 1-64 letters, digits, '-', '_' or '.'",
                i + 1
            ));
        }
        if key.trim().len() < 16 {
            return Err(format!("the key of {name:?} is shorter than 16 characters"));
        }
        if pairs.iter().any(|(n, _)| n == name) {
            return Err(format!("the name {name:?} appears twice"));
        }
        pairs.push((name.to_owned(), Secret::new(key.trim())));
    }
    Ok(pairs)
}

/// An API key's name: what tasks record as their owner.
pub fn is_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
