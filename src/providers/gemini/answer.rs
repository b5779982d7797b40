//! Reading a successful (HTTP 200) `generateContent` answer: the images, or why there are
//! none in plain words.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde_json::Value;

/// How much of a text-only reply is quoted in the task's error.
const QUOTED_TEXT_CHARS: usize = 300;

/// What a successful (HTTP 200) answer holds.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Images(Vec<Bytes>),
    /// No image, with a stable code and Gemini's reason in plain words.
    NoImage {
        code: &'static str,
        message: String,
    },
    /// Not an answer we can read (bad base64, wrong shapes).
    Malformed(String),
}

fn field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    value.get(camel).or_else(|| value.get(snake))
}

fn str_field<'a>(value: &'a Value, camel: &str, snake: &str) -> Option<&'a str> {
    field(value, camel, snake)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Reads a `generateContent` answer: every part of every candidate is looked at; thought
/// parts (interim images some models send while reasoning) are skipped.
pub fn read_answer(answer: &Value) -> Answer {
    if let Some(feedback) = field(answer, "promptFeedback", "prompt_feedback")
        && let Some(reason) = str_field(feedback, "blockReason", "block_reason")
        && reason != "BLOCK_REASON_UNSPECIFIED"
    {
        let detail = str_field(feedback, "blockReasonMessage", "block_reason_message")
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        return Answer::NoImage {
            code: "prompt_blocked",
            message: format!(
                "Gemini blocked the prompt (blockReason {reason}): {}{detail}; nothing was generated",
                block_reason_words(reason)
            ),
        };
    }
    let candidates = answer
        .get("candidates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut images = Vec::new();
    let mut texts: Vec<&str> = Vec::new();
    for candidate in candidates {
        let parts = candidate
            .get("content")
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for part in parts {
            if part.get("thought").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(text) = part.get("text").and_then(Value::as_str) {
                texts.push(text);
            }
            let Some(inline) = field(part, "inlineData", "inline_data") else {
                continue;
            };
            let mime = str_field(inline, "mimeType", "mime_type").unwrap_or_default();
            if !mime.starts_with("image/") {
                tracing::debug!(mime, "skipping a non-image inline part in Gemini's answer");
                continue;
            }
            let Some(data) = inline.get("data").and_then(Value::as_str) else {
                return Answer::Malformed("an inlineData part has no data".to_owned());
            };
            match BASE64.decode(data) {
                Ok(bytes) => images.push(Bytes::from(bytes)),
                Err(e) => {
                    return Answer::Malformed(format!(
                        "an inlineData part is not valid base64: {e}"
                    ));
                }
            }
        }
    }
    if !images.is_empty() {
        return Answer::Images(images);
    }
    let finish = candidates
        .iter()
        .find_map(|c| str_field(c, "finishReason", "finish_reason"));
    let finish_message = candidates
        .iter()
        .find_map(|c| str_field(c, "finishMessage", "finish_message"))
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let text = texts.join(" ");
    let text = text.trim();
    match finish {
        Some(reason) if reason != "STOP" && reason != "FINISH_REASON_UNSPECIFIED" => {
            let (code, words) = finish_reason_words(reason);
            let quoted = if text.is_empty() {
                String::new()
            } else {
                format!("; it said: \"{}\"", quote(text))
            };
            Answer::NoImage {
                code,
                message: format!(
                    "Gemini stopped without an image (finishReason {reason}): {words}{finish_message}{quoted}"
                ),
            }
        }
        _ if !text.is_empty() => Answer::NoImage {
            code: "text_only",
            message: format!(
                "Gemini answered with text only and no image: \"{}\"",
                quote(text)
            ),
        },
        _ if candidates.is_empty() => Answer::NoImage {
            code: "no_image",
            message: "Gemini answered without any candidate and without a block reason".to_owned(),
        },
        _ => Answer::NoImage {
            code: "no_image",
            message: format!("Gemini finished without an image or any text{finish_message}"),
        },
    }
}

fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(QUOTED_TEXT_CHARS).collect();
    if text.chars().count() > QUOTED_TEXT_CHARS {
        quoted.push('…');
    }
    quoted
}

fn block_reason_words(reason: &str) -> &'static str {
    match reason {
        "SAFETY" => "Gemini's safety filters flagged it",
        "PROHIBITED_CONTENT" => "it asks for prohibited content",
        "BLOCKLIST" => "it contains terms on Gemini's blocklist",
        "IMAGE_SAFETY" => "an input image was flagged by Gemini's safety filters",
        _ => "Gemini did not say why",
    }
}

/// A stable code and plain words for each `finishReason` that ends without an image.
fn finish_reason_words(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "SAFETY" => (
            "image_blocked",
            "Gemini's safety filters blocked the result",
        ),
        "IMAGE_SAFETY" => (
            "image_blocked",
            "Gemini's image safety filters blocked the generated image",
        ),
        "PROHIBITED_CONTENT" | "IMAGE_PROHIBITED_CONTENT" => (
            "image_blocked",
            "the request was judged to ask for prohibited content",
        ),
        "BLOCKLIST" => ("image_blocked", "the request contains blocklisted terms"),
        "SPII" => (
            "image_blocked",
            "the request may contain sensitive personal information",
        ),
        "RECITATION" | "IMAGE_RECITATION" => (
            "image_blocked",
            "the result would have reproduced protected material",
        ),
        "NO_IMAGE" => ("no_image", "the model produced no image for this request"),
        "MAX_TOKENS" => (
            "no_image",
            "the answer reached its token limit before an image",
        ),
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => {
            ("no_image", "the model answered with a tool call")
        }
        _ => (
            "no_image",
            "the model stopped for a reason darkroom does not know",
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::image::tiny_png;

    fn image_part(bytes: &[u8]) -> Value {
        json!({"inlineData": {"mimeType": "image/png", "data": BASE64.encode(bytes)}})
    }

    #[test]
    fn every_part_of_every_candidate_is_scanned() {
        let png = tiny_png(3, 3);
        let answer = json!({"candidates": [
            {"content": {"parts": [{"text": "Here you go"}, {"thought": true, "inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}},
            {"content": {"parts": [{"text": "and"}, image_part(&png)]}, "finishReason": "STOP"}
        ]});
        assert_eq!(
            read_answer(&answer),
            Answer::Images(vec![Bytes::from(png.clone())])
        );
        // snake_case is accepted too.
        let snake = json!({"candidates": [{"content": {"parts": [
            {"inline_data": {"mime_type": "image/png", "data": BASE64.encode(&png)}}]}}]});
        assert!(matches!(read_answer(&snake), Answer::Images(v) if v.len() == 1));
    }

    #[test]
    fn a_blocked_prompt_is_a_failure_with_the_reason() {
        let answer = json!({"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}});
        let Answer::NoImage { code, message } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert_eq!(code, "prompt_blocked");
        assert!(message.contains("blockReason SAFETY"), "{message}");
        assert!(message.contains("safety filters"), "{message}");
    }

    #[test]
    fn safety_finish_reasons_fail_in_plain_words() {
        for (reason, code, words) in [
            ("SAFETY", "image_blocked", "safety filters"),
            ("IMAGE_SAFETY", "image_blocked", "image safety filters"),
            ("PROHIBITED_CONTENT", "image_blocked", "prohibited content"),
            ("NO_IMAGE", "no_image", "produced no image"),
        ] {
            let answer =
                json!({"candidates": [{"finishReason": reason, "content": {"parts": []}}]});
            let Answer::NoImage { code: got, message } = read_answer(&answer) else {
                panic!("{reason}: not a failure");
            };
            assert_eq!(got, code, "{reason}");
            assert!(message.contains(reason), "{message}");
            assert!(message.contains(words), "{message}");
        }
    }

    #[test]
    fn a_text_only_reply_is_quoted() {
        let answer = json!({"candidates": [{"finishReason": "STOP",
            "content": {"parts": [{"text": "I can only describe this image."}]}}]});
        let Answer::NoImage { code, message } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert_eq!(code, "text_only");
        assert!(
            message.contains("I can only describe this image."),
            "{message}"
        );
        let long = "x".repeat(1000);
        let answer = json!({"candidates": [{"content": {"parts": [{"text": long}]}}]});
        let Answer::NoImage { message, .. } = read_answer(&answer) else {
            panic!("not a failure");
        };
        assert!(message.len() < 500, "{message}");
    }

    #[test]
    fn empty_and_broken_answers() {
        assert!(matches!(
            read_answer(&json!({})),
            Answer::NoImage {
                code: "no_image",
                ..
            }
        ));
        let broken = json!({"candidates": [{"content": {"parts": [
            {"inlineData": {"mimeType": "image/png", "data": "not base64!"}}]}}]});
        assert!(matches!(read_answer(&broken), Answer::Malformed(_)));
    }
}
