//! Keeps a repeated error from flooding the log: the first occurrence of a message is
//! logged at once, identical ones after it are counted and reported with the count at most
//! once per window. A full disk makes every worker tick and every request fail the same way;
//! the operator needs one line saying so (and how often), not six a second.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How often a repeating message is logged again, with its count.
const WINDOW: Duration = Duration::from_secs(60);
/// Distinct messages remembered; past it the oldest are forgotten (and logged afresh).
const MAX_KEYS: usize = 256;

struct Seen {
    logged_at: Instant,
    /// Occurrences since the last line that was logged.
    suppressed: u64,
}

/// Decides which occurrences of a repeating message are logged.
pub struct Throttle {
    window: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

impl Throttle {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this occurrence of `message` should be logged, `n` being how many
    /// identical ones were left out since the last line; `None` to stay quiet.
    pub fn admit(&self, message: &str) -> Option<u64> {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = seen.get_mut(message) {
            if now.duration_since(entry.logged_at) < self.window {
                entry.suppressed += 1;
                return None;
            }
            let repeated = entry.suppressed;
            entry.logged_at = now;
            entry.suppressed = 0;
            return Some(repeated);
        }
        if seen.len() >= MAX_KEYS {
            let window = self.window;
            seen.retain(|_, e| now.duration_since(e.logged_at) < window);
            if seen.len() >= MAX_KEYS {
                seen.clear();
            }
        }
        seen.insert(
            message.to_owned(),
            Seen {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }

    /// Forgets `message`: the next occurrence is logged at once (after a recovery).
    pub fn forget(&self, message: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(message);
    }
}

/// The process-wide throttle for error lines.
pub fn errors() -> &'static Throttle {
    static ERRORS: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(WINDOW));
    &ERRORS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_logged_once_per_window() {
        let throttle = Throttle::new(Duration::from_millis(50));
        assert_eq!(throttle.admit("disk full"), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit("disk full"), None);
        }
        // Another message is not held back by the first.
        assert_eq!(throttle.admit("read-only"), Some(0));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(throttle.admit("disk full"), Some(5));
        assert_eq!(throttle.admit("disk full"), None);
    }

    #[test]
    fn a_forgotten_message_is_logged_again_at_once() {
        let throttle = Throttle::new(Duration::from_secs(60));
        assert_eq!(throttle.admit("x"), Some(0));
        assert_eq!(throttle.admit("x"), None);
        throttle.forget("x");
        assert_eq!(throttle.admit("x"), Some(0));
    }
}
