//! Standard Webhooks signing secrets, `whsec_<base64>`: the one parser, used by the
//! configuration check and by the webhook signer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

pub const SECRET_PREFIX: &str = "whsec_";

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub fn parse_secret(raw: &str) -> Result<Vec<u8>, String> {
    let encoded = raw.strip_prefix(SECRET_PREFIX).ok_or_else(|| {
        format!("must start with {SECRET_PREFIX} (whsec_<base64 of 24–64 random bytes>)")
    })?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| "is not whsec_ followed by standard base64".to_owned())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; use 24–64 random bytes",
            key.len()
        ));
    }
    Ok(key)
}
