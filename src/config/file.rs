//! The TOML file as a configuration source: each value is read by the key at its path in
//! [`KEYS`](super::keys::KEYS); a path no key has is refused, so a typo does not pass
//! silently. `[storage.s3]` is read as a whole.

use super::keys::KEYS;
use super::types::{Raw, Secret, Setting, parse_http_url};
use super::{Config, S3Config};

/// Applies the file's values over `config`; the problem names the key.
pub(super) fn apply(config: &mut Config, text: &str) -> Result<(), String> {
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let mut values = Vec::new();
    flatten(&doc, "", &mut values);
    for (path, value) in values {
        if path == "storage.s3" {
            config.storage.s3 = Some(read_s3(value)?);
            continue;
        }
        let key = KEYS
            .iter()
            .find(|k| k.path == path)
            .ok_or_else(|| format!("unknown key {path} (darkroom.example.toml lists every key)"))?;
        (key.set)(config, Raw::Toml(value), None).map_err(|p| format!("{} {p}", key.label()))?;
    }
    Ok(())
}

/// `(dotted path, value)` of every value that is not a table, and of `[storage.s3]`.
fn flatten<'a>(table: &'a toml::Table, prefix: &str, out: &mut Vec<(String, &'a toml::Value)>) {
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) if path != "storage.s3" => flatten(inner, &path, out),
            _ => out.push((path, value)),
        }
    }
}

fn read_s3(value: &toml::Value) -> Result<S3Config, String> {
    let table = value
        .as_table()
        .ok_or_else(|| "storage.s3 must be a table".to_owned())?;
    const FIELDS: [&str; 5] = [
        "endpoint",
        "region",
        "bucket",
        "access_key_id",
        "secret_access_key",
    ];
    if let Some(unknown) = table.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key storage.s3.{unknown} (darkroom.example.toml lists every key)"
        ));
    }
    let field = |name: &str| -> Result<String, String> {
        let value = table
            .get(name)
            .ok_or_else(|| format!("storage.s3.{name} is missing"))?;
        String::from_toml(value).map_err(|p| format!("storage.s3.{name} {p}"))
    };
    Ok(S3Config {
        endpoint: parse_http_url(&field("endpoint")?)
            .map_err(|p| format!("storage.s3.endpoint {p}"))?,
        region: field("region")?,
        bucket: field("bucket")?,
        access_key_id: field("access_key_id")?,
        secret_access_key: Secret::new(field("secret_access_key")?),
    })
}
