//! The field names a generation request may use, and the refusal of any other: a client
//! that writes `aspect_ratio` for `aspectRatio` must hear so, not get a 1:1 image. A near
//! miss (another case or separator, or a typo or two) is answered with the right spelling.

use serde_json::{Map, Value};

use super::InputError;

/// Every top-level field of `GenerateBody` (a unit test keeps the two in step).
pub(super) const TOP_LEVEL: &[&str] = &[
    "prompt",
    "uploads",
    "imageUrls",
    "referenceUploads",
    "referenceUrls",
    "provider",
    "model",
    "aspectRatio",
    "outputFormat",
    "priority",
    "batchId",
    "webhookUrl",
    "fallback",
];

/// An `uploads` entry. `url` is what the original's front end sends with each upload; it is
/// accepted and ignored (darkroom builds its own URL from the key).
const UPLOAD: &[&str] = &["key", "url", "provider"];
/// A `referenceUploads` entry (`provider` is refused with its own sentence).
const REFERENCE_UPLOAD: &[&str] = &["key", "provider"];
/// An `imageUrls` or `referenceUrls` entry written as an object.
const URL_ENTRY: &[&str] = &["url", "provider"];

/// Refuses the first field of `obj` (or of an object inside its lists) that a generation
/// request does not have, naming it and, for a near miss, the right spelling.
pub(super) fn refuse_unknown(obj: &Map<String, Value>) -> Result<(), InputError> {
    check(obj, TOP_LEVEL, "")?;
    for (list, known) in [
        ("uploads", UPLOAD),
        ("referenceUploads", REFERENCE_UPLOAD),
        ("imageUrls", URL_ENTRY),
        ("referenceUrls", URL_ENTRY),
    ] {
        let Some(Value::Array(items)) = obj.get(list) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            if let Value::Object(entry) = item {
                check(entry, known, &format!("{list}[{i}]."))?;
            }
        }
    }
    Ok(())
}

fn check(obj: &Map<String, Value>, known: &[&str], prefix: &str) -> Result<(), InputError> {
    let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let message = match near_miss(unknown, known) {
        Some(right) => {
            format!("unknown field \"{prefix}{unknown}\": did you mean \"{prefix}{right}\"?")
        }
        None => format!(
            "unknown field \"{prefix}{unknown}\"; the fields here are {}",
            known.join(", ")
        ),
    };
    Err(InputError::new("unknown_field", message))
}

/// The known name `given` most likely meant: the same letters in another case or with `_`
/// or `-` between words (`aspect_ratio`, `OutputFormat`), else one a typo or two away.
fn near_miss<'a>(given: &str, known: &[&'a str]) -> Option<&'a str> {
    let folded = fold(given);
    if let Some(same) = known.iter().find(|k| fold(k) == folded) {
        return Some(same);
    }
    // One slip in a short name, two in a longer one; a very short name could be anything.
    let allowed = match folded.chars().count() {
        0..=2 => return None,
        3..=5 => 1,
        _ => 2,
    };
    known
        .iter()
        .map(|k| (edits(&folded, &fold(k)), *k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Levenshtein distance (names are short: a row at a time is plenty).
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(body: Value) -> String {
        refuse_unknown(body.as_object().unwrap())
            .unwrap_err()
            .message
    }

    #[test]
    fn near_misses_name_the_right_spelling() {
        assert_eq!(
            refusal(json!({"prompt": "p", "aspect_ratio": "16:9"})),
            "unknown field \"aspect_ratio\": did you mean \"aspectRatio\"?"
        );
        assert_eq!(
            refusal(json!({"output_format": "jpeg"})),
            "unknown field \"output_format\": did you mean \"outputFormat\"?"
        );
        assert_eq!(
            refusal(json!({"image_urls": []})),
            "unknown field \"image_urls\": did you mean \"imageUrls\"?"
        );
        assert_eq!(
            refusal(json!({"promt": "p"})),
            "unknown field \"promt\": did you mean \"prompt\"?"
        );
        assert_eq!(
            refusal(json!({"uploads": [{"key": "uploads/a.png", "kee": 1}]})),
            "unknown field \"uploads[0].kee\": did you mean \"uploads[0].key\"?"
        );
    }

    #[test]
    fn far_misses_list_the_fields() {
        let message = refusal(json!({"prompt": "p", "seed": 4}));
        assert!(
            message.starts_with("unknown field \"seed\"; the fields here are prompt, uploads"),
            "{message}"
        );
        let message = refusal(json!({"imageUrls": [{"url": "https://x/a.png", "weight": 1}]}));
        assert_eq!(
            message,
            "unknown field \"imageUrls[0].weight\"; the fields here are url, provider"
        );
    }

    #[test]
    fn known_fields_pass_including_the_original_front_ends_upload_url() {
        let body = json!({"prompt": "p", "uploads": [{"key": "uploads/a.png", "url": "http://x/a.png"}],
            "imageUrls": ["https://x/b.png", {"url": "https://x/c.png", "provider": "kie"}]});
        assert!(refuse_unknown(body.as_object().unwrap()).is_ok());
    }

    #[test]
    fn edit_distance() {
        assert_eq!(edits("kitten", "sitting"), 3);
        assert_eq!(edits("", "abc"), 3);
        assert_eq!(edits("prompt", "prompt"), 0);
    }
}
