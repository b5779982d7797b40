//! Classifying Gemini's HTTP errors as PROVIDERS.md says: which are retryable, and the
//! retry delay Google suggests.

use std::time::Duration;

use serde_json::Value;

use super::super::ProviderError;

/// PROVIDERS.md: retry 429/500/503/504, not 400/403/404. Other 5xx (and 408) are treated as
/// passing, other 4xx as permanent.
pub fn classify_error(
    status: u16,
    answer: Option<&Value>,
    header_retry_after: Option<Duration>,
) -> ProviderError {
    let error = answer.and_then(|a| a.get("error"));
    let detail = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("no message");
    let message = match error.and_then(|e| e.get("status")).and_then(Value::as_str) {
        Some(grpc_status) => format!("Gemini answered HTTP {status} {grpc_status}: {detail}"),
        None => format!("Gemini answered HTTP {status}: {detail}"),
    };
    let retryable = matches!(status, 408 | 429 | 500 | 502 | 503 | 504);
    if retryable {
        ProviderError::Retryable {
            code: status.to_string(),
            message,
            retry_after: header_retry_after.or_else(|| error.and_then(retry_info_delay)),
        }
    } else {
        ProviderError::Permanent {
            code: status.to_string(),
            message,
        }
    }
}

/// `google.rpc.RetryInfo.retryDelay` (`"37s"`, `"1.5s"`) from an error's `details`.
fn retry_info_delay(error: &Value) -> Option<Duration> {
    error
        .get("details")?
        .as_array()?
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| {
            let raw = d.get("retryDelay")?.as_str()?.strip_suffix('s')?;
            let secs: f64 = raw.trim().parse().ok()?;
            (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn errors_are_classified_as_providers_md_says() {
        for status in [429, 500, 503, 504] {
            assert!(
                matches!(
                    classify_error(status, None, None),
                    ProviderError::Retryable { .. }
                ),
                "{status}"
            );
        }
        for status in [400, 403, 404] {
            assert!(
                matches!(
                    classify_error(status, None, None),
                    ProviderError::Permanent { .. }
                ),
                "{status}"
            );
        }
        let answer = json!({"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}});
        let ProviderError::Permanent { code, message } = classify_error(400, Some(&answer), None)
        else {
            panic!("not permanent");
        };
        assert_eq!(code, "400");
        assert_eq!(
            message,
            "Gemini answered HTTP 400 INVALID_ARGUMENT: API key not valid."
        );
    }

    #[test]
    fn retry_info_sets_the_retry_floor() {
        let answer = json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}]}});
        let ProviderError::Retryable { retry_after, .. } = classify_error(429, Some(&answer), None)
        else {
            panic!("not retryable");
        };
        assert_eq!(retry_after, Some(Duration::from_millis(1500)));
        let ProviderError::Retryable { retry_after, .. } =
            classify_error(429, Some(&answer), Some(Duration::from_secs(7)))
        else {
            panic!("not retryable");
        };
        assert_eq!(retry_after, Some(Duration::from_secs(7)));
    }
}
