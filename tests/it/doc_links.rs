//! Every link of the README and the pages under `docs/` leads somewhere: a relative link
//! names a file of this repository, and a `#anchor` names a heading of the page it points
//! to (GitHub's heading ids). Links to other sites are refused, so nothing is fetched and
//! no page depends on one; the docs write such hosts in words. The README links every page.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every `docs/*.md`, as paths relative to the repository root.
fn pages() -> Vec<PathBuf> {
    let root = repo_root();
    let mut pages = vec![PathBuf::from("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ can be read")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| path.strip_prefix(&root).expect("under the root").to_owned())
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of a page outside fenced code blocks, with their line numbers (from 1).
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m && trimmed.trim_end() == m => fence = None,
            (None, None) => lines.push((index + 1, line)),
            _ => {}
        }
    }
    lines
}

/// A line with its inline code spans removed: a link written inside backticks is text.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].len() - rest[start..].trim_start_matches('`').len();
        let opener = &rest[start..start + ticks];
        let after = &rest[start + ticks..];
        match after.find(opener) {
            Some(end) => rest = &after[end + ticks..],
            // An unmatched backtick is a literal one.
            None => {
                out.push_str(opener);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The targets of the links on one line: `[text](target)`, `![alt](target)`, a reference
/// definition `[label]: target`, and autolinks `<scheme://…>`.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code_spans(line);
    let mut targets = Vec::new();
    let mut rest = line.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        // `[text](target "title")`: the target ends at the first space.
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    let trimmed = line.trim_start();
    if trimmed.starts_with('[')
        && let Some(close) = trimmed.find("]:")
        && !trimmed[..close].contains("](")
    {
        let target = trimmed[close + 2..].split_whitespace().next().unwrap_or("");
        targets.push(target.to_owned());
    }
    let mut rest = line.as_str();
    while let Some(at) = rest.find('<') {
        let after = &rest[at + 1..];
        let end = after.find('>').unwrap_or(after.len());
        let inside = &after[..end];
        if is_absolute(inside) {
            targets.push(inside.to_owned());
        }
        rest = &after[end.min(after.len())..];
    }
    targets
}

fn is_absolute(target: &str) -> bool {
    let lower = target.to_ascii_lowercase();
    lower.starts_with("http://")
        || lower.starts_with("https://")
        || lower.starts_with("//")
        || lower.starts_with("mailto:")
        || lower.starts_with("ftp://")
}

/// GitHub's id for a heading: lower case; letters, digits, `-` and `_` kept, each space a
/// `-`, everything else (punctuation, backticks, `…`) dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// A heading's text as shown: a link in it counts by its text.
fn shown_text(heading: &str) -> String {
    let mut out = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        let Some(mid) = rest[open..].find("](") else {
            break;
        };
        let Some(close) = rest[open + mid..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..open + mid]);
        rest = &rest[open + mid + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Every heading id of a page, repeated headings numbered as GitHub does (`-1`, `-2`).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&shown_text(line[hashes..].trim_end_matches('#')));
        let count = seen.entry(base.clone()).or_insert(0);
        let id = if *count == 0 {
            base.clone()
        } else {
            format!("{base}-{count}")
        };
        *count += 1;
        anchors.insert(id);
    }
    anchors
}

/// `a/b/../c` → `a/c`; `None` when the path climbs out of the repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Every broken link of one page, as `page:line: target: why`.
fn broken_links(page: &Path, text: &str, read: &dyn Fn(&Path) -> Option<String>) -> Vec<String> {
    let root = repo_root();
    let dir = page.parent().unwrap_or(Path::new(""));
    let mut broken = Vec::new();
    for (number, line) in prose_lines(text) {
        for target in link_targets(line) {
            let mut fail = |why: &str| {
                broken.push(format!("{}:{number}: {target}: {why}", page.display()));
            };
            if target.is_empty() {
                fail("empty link");
                continue;
            }
            if is_absolute(&target) {
                fail("a link to another site; name the host in words instead");
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((file, anchor)) => (file, Some(anchor)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                Some(page.to_owned())
            } else {
                normalize(&dir.join(file))
            };
            let Some(resolved) = resolved else {
                fail("points outside the repository");
                continue;
            };
            // A link within the page needs no look at the disk.
            if !file.is_empty() && !root.join(&resolved).exists() {
                fail("no such file in the repository");
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if resolved.extension().is_none_or(|ext| ext != "md") {
                fail("an anchor on a file that is not a markdown page");
                continue;
            }
            let Some(target_text) = read(&resolved) else {
                fail("the page cannot be read");
                continue;
            };
            if !anchors(&target_text).contains(anchor) {
                fail("no heading of that page has this id");
            }
        }
    }
    broken
}

fn read_page(path: &Path) -> Option<String> {
    std::fs::read_to_string(repo_root().join(path)).ok()
}

#[test]
fn every_link_of_the_readme_and_the_docs_leads_somewhere() {
    let pages = pages();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = read_page(page).expect("the page can be read");
        checked += prose_lines(&text)
            .iter()
            .map(|(_, line)| link_targets(line).len())
            .sum::<usize>();
        broken.extend(broken_links(page, &text, &read_page));
    }
    println!("{checked} links checked on {} pages", pages.len());
    assert!(
        checked > 50,
        "only {checked} links found: the scanner is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_links_every_docs_page() {
    let readme = read_page(Path::new("README.md")).expect("README.md");
    let linked: BTreeSet<String> = prose_lines(&readme)
        .iter()
        .flat_map(|(_, line)| link_targets(line))
        .map(|target| target.split('#').next().unwrap_or("").to_owned())
        .collect();
    for page in pages().iter().skip(1) {
        let page = page.to_string_lossy().replace('\\', "/");
        assert!(linked.contains(&page), "README.md does not link {page}");
    }
}

#[test]
fn a_broken_link_is_reported() {
    let page = Path::new("docs/EXAMPLE.md");
    let text = "# Example\n\n## A `GET /api/task-status?taskId=…` heading\n\n\
        [ok](#a-get-apitask-statustaskid-heading) [ok](../README.md) [ok](API.md#error-codes)\n\
        [gone](MISSING.md) [bad anchor](API.md#no-such-heading) [out](../../shared/x.md)\n\
        [web](https://example.com/) <https://example.com/> `[code](MISSING.md)`\n\
        ```\n[fenced](MISSING.md)\n```\n";
    let broken = broken_links(page, text, &|path: &Path| {
        if path == page {
            Some(text.to_owned())
        } else {
            read_page(path)
        }
    });
    let targets: Vec<&str> = broken
        .iter()
        .map(|line| line.split(": ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        targets,
        [
            "MISSING.md",
            "API.md#no-such-heading",
            "../../shared/x.md",
            "https://example.com/",
            "https://example.com/",
        ],
        "{broken:#?}"
    );
}

#[test]
fn heading_ids_follow_github() {
    assert_eq!(slug("`POST /api/upload`"), "post-apiupload");
    assert_eq!(
        slug("`GET /api/task-status?taskId=…`"),
        "get-apitask-statustaskid"
    );
    assert_eq!(
        slug("The database: SQLite or PostgreSQL"),
        "the-database-sqlite-or-postgresql"
    );
    assert_eq!(
        slug("Live progress: `GET /api/events`, `GET /api/ws`"),
        "live-progress-get-apievents-get-apiws"
    );
    let ids = anchors("# A\n## Notes\n```sh\n# not a heading\n```\n## Notes\n");
    assert_eq!(
        ids,
        BTreeSet::from(["a".to_owned(), "notes".to_owned(), "notes-1".to_owned()])
    );
}
