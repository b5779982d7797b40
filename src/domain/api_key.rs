//! API keys: how they look, how they are made and how they are stored. A key is `dk_`
//! followed by 43 base64url characters (32 random bytes); only its SHA-256 is stored, so a
//! leaked database does not leak keys. A fast hash is right here: the keys are random, not
//! passwords, so there is nothing to brute-force.

use base64::Engine as _;
use rand::Rng;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "dk_";

/// A new key, shown once, and the hash that is stored.
pub struct NewApiKey {
    pub key: String,
    pub hash: String,
    /// The first characters, stored to tell keys apart in listings.
    pub hint: String,
}

pub fn generate() -> NewApiKey {
    let bytes: [u8; 32] = rand::rng().random();
    let key = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    NewApiKey {
        hash: hash(&key),
        hint: key.chars().take(PREFIX.len() + 6).collect(),
        key,
    }
}

/// What is stored and looked up: hex SHA-256 of the key as presented.
pub fn hash(key: &str) -> String {
    hex::encode(digest(key))
}

/// The SHA-256 of the key as presented: what [`hash`] spells in hex, for tables held in
/// memory (no string made per request).
pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key in an `Authorization: Bearer …` header value, if that is what it holds.
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let key = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty() && key.len() <= 512).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed() {
        let a = generate();
        let b = generate();
        assert!(a.key.starts_with("dk_") && a.key.len() == 46, "{}", a.key);
        assert_ne!(a.key, b.key);
        assert_eq!(a.hash, hash(&a.key));
        assert!(!a.hash.contains(&a.key));
        assert!(a.key.starts_with(&a.hint));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(from_authorization("Bearer dk_abc"), Some("dk_abc"));
        assert_eq!(from_authorization("bearer   dk_abc "), Some("dk_abc"));
        assert_eq!(from_authorization("Basic dk_abc"), None);
        assert_eq!(from_authorization("Bearer "), None);
        assert_eq!(from_authorization("dk_abc"), None);
    }
}
