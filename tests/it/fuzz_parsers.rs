//! R10: property-based fuzzing of everything that parses outside input — the generate
//! request, KIE's callback/record bodies, the webhook signature headers, the bearer header,
//! and the image walk (on mutated real images). Each property runs a fixed number of cases
//! (`PROPTEST_CASES` overrides), so the time in CI is bounded; none may panic.

use std::io::Cursor;

use darkroom::domain::api_key;
use darkroom::domain::image::{ImageKind, ImageLimits, inspect};
use darkroom::domain::request::{GenerateRequest, ProviderName, RequestPolicy};
use darkroom::domain::sanitize;
use darkroom::domain::webhook;
use darkroom::providers::kie::{CostUnit, Record};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Field names the parsers look for, so generated objects reach deep paths.
const NAMES: &[&str] = &[
    "prompt",
    "uploads",
    "imageUrls",
    "referenceUrls",
    "referenceUploads",
    "key",
    "url",
    "aspectRatio",
    "outputFormat",
    "model",
    "provider",
    "priority",
    "batchId",
    "webhookUrl",
    "code",
    "msg",
    "message",
    "data",
    "taskId",
    "task_id",
    "state",
    "status",
    "resultJson",
    "resultUrls",
    "failCode",
    "failMsg",
    "consumeCredits",
    "creditsConsumed",
    "costTime",
    "param",
    "sources",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "success",
            "fail",
            "failed",
            "waiting",
            "9:16",
            "png",
            "jpeg",
            "uploads/a.png",
            "https://example.com/a.png",
            "{\"resultUrls\":[\"https://x/a.png\"]}",
            "{bad",
            "google/nano-banana-edit",
            "kie",
            "../../etc/passwd",
            "javascript:alert(1)",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

fn sample_images() -> Vec<(ImageKind, Vec<u8>)> {
    let img = image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, 99])
    });
    [
        (ImageKind::Png, image::ImageFormat::Png),
        (ImageKind::Jpeg, image::ImageFormat::Jpeg),
        (ImageKind::Webp, image::ImageFormat::WebP),
    ]
    .into_iter()
    .map(|(kind, format)| {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        (kind, out.into_inner())
    })
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn generate_parser_never_panics(body in json_value()) {
        for default_provider in [ProviderName::Kie, ProviderName::Gemini] {
            let policy = RequestPolicy {
                default_provider,
                gemini_model: "gemini-2.5-flash-image".to_owned(),
            };
            if let Err(e) = GenerateRequest::from_json(&body, &policy) {
                prop_assert!(!e.code.is_empty() && !e.message.is_empty());
            }
        }
    }

    #[test]
    fn callback_record_parser_never_panics(body in json_value()) {
        let data = body.get("data").cloned().unwrap_or(body);
        let _ = Record::parse(&data, CostUnit::Seconds);
        let _ = Record::parse(&data, CostUnit::Millis);
    }

    #[test]
    fn signature_check_never_panics_and_never_passes_junk(
        task_id in proptest::option::of(".{0,40}"),
        timestamp in proptest::option::of("[0-9+\\-e. ]{0,14}"),
        signature in proptest::option::of("[A-Za-z0-9+/=,v ]{0,60}"),
    ) {
        let now = chrono::Utc::now().timestamp();
        let verdict = webhook::verify(b"key", task_id.as_deref(), timestamp.as_deref(), signature.as_deref(), now);
        prop_assert!(verdict.is_err());
    }

    #[test]
    fn bearer_parser_never_panics(header in ".{0,200}") {
        if let Some(key) = api_key::from_authorization(&header) {
            prop_assert!(!key.is_empty() && key.len() <= 512);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Real images with bytes flipped, cut or spliced: the header read and the structural
    /// walk answer Ok or a refusal, never a panic, and stripping never makes a file that
    /// the walk would refuse.
    #[test]
    fn image_walk_never_panics_on_mutated_images(
        which in 0usize..3,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let (kind, mut bytes) = sample_images().swap_remove(which);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = inspect(&bytes, ImageLimits::default());
        if sanitize::check(kind, &mut Cursor::new(&bytes)).is_ok() {
            let mut out = Cursor::new(Vec::new());
            sanitize::strip_metadata(kind, &mut Cursor::new(&bytes), &mut out).unwrap();
            let stripped = out.into_inner();
            prop_assert!(sanitize::check(kind, &mut Cursor::new(&stripped)).is_ok());
        }
    }
}
