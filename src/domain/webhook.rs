//! KIE's optional callback signature: `X-Webhook-Timestamp` (Unix seconds) and
//! `X-Webhook-Signature = base64(HMAC-SHA256(key, taskId + "." + timestamp))`. Pure
//! checks, no I/O: the caller passes the clock.

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "x-webhook-signature";
/// How far a timestamp may be from our clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

/// Why a signed callback was refused. The messages are safe to return to the sender.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Webhook-Timestamp header is missing")]
    MissingTimestamp,
    #[error("the X-Webhook-Timestamp header is not Unix seconds")]
    BadTimestamp,
    #[error("the X-Webhook-Timestamp is more than 300 seconds from the server's clock")]
    StaleTimestamp,
    #[error("the X-Webhook-Signature header is missing")]
    MissingSignature,
    #[error("the callback body names no data.taskId to check the signature against")]
    MissingTaskId,
    #[error("the X-Webhook-Signature does not match")]
    Mismatch,
}

/// Checks KIE's signature over `task_id` (KIE's id, from the body) and the timestamp.
/// The signature is decoded and compared by the MAC's own constant-time `verify_slice`,
/// which refuses any length other than the full 32 bytes: an empty, truncated or `v1,`-style
/// value can never match a prefix.
pub fn verify(
    key: &[u8],
    task_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    // Digits only: no sign, no exponent, no fraction, bounded length.
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(SignatureError::BadTimestamp);
    }
    let at: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_secs - at).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::StaleTimestamp);
    }
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let task_id = task_id
        .filter(|id| !id.is_empty())
        .ok_or(SignatureError::MissingTaskId)?;
    let presented = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .map_err(|_| SignatureError::Mismatch)?;
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|_| SignatureError::Mismatch)?;
    mac.update(task_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.verify_slice(&presented)
        .map_err(|_| SignatureError::Mismatch)
}

/// The signature KIE would send; for the simulator and tests.
pub fn sign(key: &[u8], task_id: &str, timestamp: i64) -> String {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{task_id}.{timestamp}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whk_test_key";
    const NOW: i64 = 1_755_599_644;

    fn check(ts: Option<&str>, sig: Option<&str>) -> Result<(), SignatureError> {
        verify(KEY, Some("e989621f"), ts, sig, NOW)
    }

    /// A known answer computed outside darkroom, from the documented algorithm, with
    /// Python's standard library:
    /// `base64.b64encode(hmac.new(b"kie-hmac-key-0123",
    ///   b"e989621f54392584b05867f87b160672.1755599644", hashlib.sha256).digest())`.
    #[test]
    fn the_signature_matches_an_independently_computed_vector() {
        const VECTOR: &str = "dGx7Yr9dsEeHJsfZn6I+fx8Rtn2RR4ONbgLOi2wAs7U=";
        let key = b"kie-hmac-key-0123";
        let task = "e989621f54392584b05867f87b160672";
        assert_eq!(sign(key, task, 1_755_599_644), VECTOR);
        assert_eq!(
            verify(
                key,
                Some(task),
                Some("1755599644"),
                Some(VECTOR),
                1_755_599_650
            ),
            Ok(())
        );
    }

    #[test]
    fn a_fresh_signature_passes() {
        let sig = sign(KEY, "e989621f", NOW - 10);
        assert_eq!(check(Some(&(NOW - 10).to_string()), Some(&sig)), Ok(()));
    }

    #[test]
    fn everything_else_fails() {
        let ts = NOW.to_string();
        let good = sign(KEY, "e989621f", NOW);
        let truncated = &good[..good.len() - 4];
        let cases: Vec<(Option<String>, Option<String>, SignatureError)> = vec![
            (None, Some(good.clone()), SignatureError::MissingTimestamp),
            (
                Some(String::new()),
                Some(good.clone()),
                SignatureError::BadTimestamp,
            ),
            (
                Some("-5".into()),
                Some(good.clone()),
                SignatureError::BadTimestamp,
            ),
            (
                Some("1e9".into()),
                Some(good.clone()),
                SignatureError::BadTimestamp,
            ),
            (
                Some((NOW - 301).to_string()),
                Some(sign(KEY, "e989621f", NOW - 301)),
                SignatureError::StaleTimestamp,
            ),
            (
                Some((NOW + 301).to_string()),
                Some(sign(KEY, "e989621f", NOW + 301)),
                SignatureError::StaleTimestamp,
            ),
            (Some(ts.clone()), None, SignatureError::MissingSignature),
            (
                Some(ts.clone()),
                Some(String::new()),
                SignatureError::Mismatch,
            ),
            (
                Some(ts.clone()),
                Some("v1,".into()),
                SignatureError::Mismatch,
            ),
            (
                Some(ts.clone()),
                Some(format!("v1,{good}")),
                SignatureError::Mismatch,
            ),
            (
                Some(ts.clone()),
                Some(truncated.to_owned()),
                SignatureError::Mismatch,
            ),
            (
                Some(ts.clone()),
                Some(sign(b"other", "e989621f", NOW)),
                SignatureError::Mismatch,
            ),
            (
                Some(ts.clone()),
                Some(sign(KEY, "another", NOW)),
                SignatureError::Mismatch,
            ),
            (
                Some((NOW - 1).to_string()),
                Some(good.clone()),
                SignatureError::Mismatch,
            ),
        ];
        for (ts, sig, expected) in cases {
            assert_eq!(
                check(ts.as_deref(), sig.as_deref()),
                Err(expected.clone()),
                "{ts:?} {sig:?}"
            );
        }
        assert_eq!(
            verify(KEY, None, Some(&ts), Some(&good), NOW),
            Err(SignatureError::MissingTaskId)
        );
    }
}
