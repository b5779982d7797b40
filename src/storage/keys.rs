//! Every object key darkroom writes is built here, with its content type and cache policy.
//! The layout is the original service's: `uploads/`, `generated/`, `kie-tasks/`.

use crate::domain::TaskId;
use crate::domain::image::ImageKind;

/// Uploads are kept a week by browsers and CDNs, as the original did.
const UPLOAD_CACHE: &str = "public, max-age=604800";
/// Generated results never change under their key.
const GENERATED_CACHE: &str = "public, max-age=31536000, immutable";
/// Task records are rewritten on every state change.
const RECORD_CACHE: &str = "no-cache";

/// A key with the metadata its object is written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectSpec {
    pub key: String,
    pub content_type: &'static str,
    pub cache_control: &'static str,
}

/// `uploads/{uuidv7}.{ext}`: never the client's file name.
pub fn upload(kind: ImageKind) -> ObjectSpec {
    ObjectSpec {
        key: format!(
            "uploads/{}.{}",
            uuid::Uuid::now_v7().simple(),
            kind.extension()
        ),
        content_type: kind.content_type(),
        cache_control: UPLOAD_CACHE,
    }
}

/// `generated/{provider}-{taskId}-{n}.{ext}`: deterministic, so a repeated ingest of the same
/// result lands on the same key and writes nothing new.
pub fn generated(provider: &str, task: &TaskId, index: usize, kind: ImageKind) -> ObjectSpec {
    ObjectSpec {
        key: format!("generated/{provider}-{task}-{index}.{}", kind.extension()),
        content_type: kind.content_type(),
        cache_control: GENERATED_CACHE,
    }
}

/// The task a `generated/{provider}-{taskId}-{n}.{ext}` key belongs to.
pub fn task_of_generated(key: &str) -> Option<TaskId> {
    let name = key.strip_prefix("generated/")?;
    let start = name.find("tsk_")?;
    let rest = &name[start..];
    let end = rest.rfind('-')?;
    TaskId::parse(&rest[..end])
}

/// `kie-tasks/{taskId}.json` (the prefix keeps the original's name for every provider).
pub fn task_record(task: &TaskId) -> ObjectSpec {
    ObjectSpec {
        key: format!("kie-tasks/{task}.json"),
        content_type: "application/json",
        cache_control: RECORD_CACHE,
    }
}

/// The key of our own upload or result that `text` names: an object key, or a URL of one
/// (`/files/{key}`, `{public base}/{key}`, signed or not): its last two path segments when
/// they are `uploads/{name}` or `generated/{name}`. `None` for anything else. Retention
/// reads tasks' inputs with it; a foreign URL that happens to end the same way is taken
/// for ours, which can only keep an object longer.
pub fn named_object(text: &str) -> Option<&str> {
    let path = text.split(['?', '#']).next()?;
    let (rest, name) = path.rsplit_once('/')?;
    let folder = rest.rsplit('/').next()?;
    let named = matches!(folder, "uploads" | "generated") && !name.is_empty();
    named.then(|| &path[path.len() - folder.len() - 1 - name.len()..])
}

/// A probe object, written (and read back, and removed) at start and by `/readyz` to prove
/// the bucket is writable: `.darkroom-probe-{uuidv7}`, a key of its own each time, so
/// instances sharing a bucket never remove each other's probe between its write and its
/// read.
pub fn probe() -> ObjectSpec {
    ObjectSpec {
        key: format!(".darkroom-probe-{}", uuid::Uuid::now_v7().simple()),
        content_type: "text/plain",
        cache_control: RECORD_CACHE,
    }
}

/// Content type and cache policy of a key darkroom wrote, for serving it from a store
/// that keeps no metadata (the local directory). Keys we did not write are not served.
pub fn serving_metadata(key: &str) -> Option<(&'static str, &'static str)> {
    let (dir, name) = key.split_once('/')?;
    let ext = name.rsplit_once('.')?.1;
    match dir {
        "uploads" => ImageKind::from_extension(ext).map(|k| (k.content_type(), UPLOAD_CACHE)),
        "generated" => ImageKind::from_extension(ext).map(|k| (k.content_type(), GENERATED_CACHE)),
        "kie-tasks" if ext == "json" => Some(("application/json", RECORD_CACHE)),
        _ => None,
    }
}

/// Keys a client may name in a URL path: our own layout only, no traversal.
pub fn is_servable(key: &str) -> bool {
    !key.contains("..")
        && !key.starts_with('/')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        && serving_metadata(key).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_deterministic_and_typed() {
        let id = TaskId::new();
        let a = generated("kie", &id, 0, ImageKind::Jpeg);
        assert_eq!(a, generated("kie", &id, 0, ImageKind::Jpeg));
        assert_eq!(a.key, format!("generated/kie-{id}-0.jpg"));
        assert_eq!(a.content_type, "image/jpeg");
        assert_eq!(
            serving_metadata(&a.key),
            Some(("image/jpeg", GENERATED_CACHE))
        );
    }

    #[test]
    fn generated_keys_name_their_task() {
        let id = TaskId::new();
        let spec = generated("kie", &id, 3, ImageKind::Png);
        assert_eq!(task_of_generated(&spec.key), Some(id));
        assert_eq!(task_of_generated("generated/kie-nope-0.png"), None);
        assert_eq!(task_of_generated("uploads/x.png"), None);
    }

    #[test]
    fn keys_and_urls_name_our_objects() {
        for (text, named) in [
            ("uploads/a.png", Some("uploads/a.png")),
            (
                "http://h:1/files/uploads/a.png?sig=x",
                Some("uploads/a.png"),
            ),
            (
                "https://cdn.example/base/uploads/uploads/a.png",
                Some("uploads/a.png"),
            ),
            (
                "https://cdn.example/generated/kie-tsk_1-0.png#f",
                Some("generated/kie-tsk_1-0.png"),
            ),
            ("https://example.com/a.png", None),
            ("https://example.com/uploads/", None),
            ("kie-tasks/tsk_1.json", None),
            ("", None),
        ] {
            assert_eq!(named_object(text), named, "{text}");
        }
    }

    #[test]
    fn only_our_layout_is_servable() {
        assert!(is_servable(&upload(ImageKind::Png).key));
        assert!(is_servable(&task_record(&TaskId::new()).key));
        for bad in [
            "../etc/passwd",
            "uploads/../x.png",
            "other/x.png",
            "uploads/x.txt",
            "/uploads/a.png",
            ".darkroom-probe",
            &probe().key,
        ] {
            assert!(!is_servable(bad), "{bad}");
        }
        assert_ne!(probe().key, probe().key, "each probe has its own key");
    }
}
