//! In-process simulators of the upstream image providers, with fault injection, so the
//! real provider clients can be tested and benchmarked over real HTTP.

pub mod kie;
mod render;

pub use kie::{KieSim, KieSimConfig, SimStats};
