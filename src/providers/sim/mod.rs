//! In-process simulators of the upstream image providers, with fault injection, so the
//! real provider clients can be tested and benchmarked over real HTTP.

pub mod gemini;
pub mod kie;
mod render;

pub use gemini::{GeminiSim, GeminiSimConfig, GeminiSimStats};
pub use kie::{KieSim, KieSimConfig, SimStats};
