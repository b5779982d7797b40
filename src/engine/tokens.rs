//! Callback tokens: issued once in the callback URL, stored only as a hash, checked in
//! constant time.

use rand::Rng;
use sha2::{Digest, Sha256};

/// A fresh callback token (shown once, in the callback URL) and the hash that is stored.
pub fn new_callback_token() -> (String, String) {
    let bytes: [u8; 32] = rand::rng().random();
    let token = hex::encode(bytes);
    let hash = hash_token(&token);
    (token, hash)
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time check of a presented token against the stored hash.
pub fn token_matches(presented: &str, stored_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    let presented = hash_token(presented);
    // Both are 64 hex characters when a token was issued; a length mismatch (no token
    // issued yet) fails without comparing a prefix.
    presented.len() == stored_hash.len()
        && bool::from(presented.as_bytes().ct_eq(stored_hash.as_bytes()))
}
