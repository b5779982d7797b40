//! In-process simulators of the upstream image providers, with fault injection, so the
//! real provider clients can be tested and benchmarked over real HTTP. This file also holds
//! the small helpers both simulators use (fault dice, key comparison).

pub mod gemini;
pub mod kie;
mod render;
pub mod settings;

pub use gemini::{GeminiSim, GeminiSimConfig, GeminiSimStats};
pub use kie::{KieSim, KieSimConfig, SimStats};

/// `p` as a probability; NaN and values ≤ 0 never happen, values ≥ 1 always do.
fn chance(rng: &mut impl rand::Rng, p: f64) -> bool {
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.random_bool(p)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret here; the contents are compared without early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_outside_the_unit_interval_are_clamped() {
        let mut rng = rand::rng();
        assert!(!chance(&mut rng, f64::NAN));
        assert!(!chance(&mut rng, -1.0));
        assert!(chance(&mut rng, 7.0));
    }

    #[test]
    fn token_comparison_needs_equal_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abc", b"abd"));
    }
}
