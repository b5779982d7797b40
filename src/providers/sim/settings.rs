//! The built-in simulators' settings, built from the configuration in one place: `serve`
//! (the in-process simulators, started by [`crate::providers::build()`]) and the standalone
//! `kie-sim` / `gemini-sim` commands (whose flags fill the same sections) both go through
//! these functions.

use super::{GeminiSimConfig, KieSimConfig};
use crate::config::{GeminiSimulatorConfig, SimulatorConfig};

/// The KIE simulator's settings from `[simulator]`; `hmac_key` signs callbacks as KIE does
/// when its webhook HMAC key is configured. Other knobs keep their defaults.
pub fn kie(knobs: &SimulatorConfig, hmac_key: Option<String>) -> KieSimConfig {
    KieSimConfig {
        latency_ms: knobs.latency_ms.as_millis(),
        fail_rate: knobs.fail_rate,
        duplicate_rate: knobs.duplicate_rate,
        duplicate_count: knobs.duplicate_count.max(1),
        drop_rate: knobs.drop_rate,
        early_callback_rate: knobs.early_callback_rate,
        forget_rate: knobs.forget_rate,
        hmac_key,
        rate_limit: knobs.rate_limit,
        ..KieSimConfig::default()
    }
}

/// The Gemini simulator's settings from `[gemini.simulator]`, serving `models`; `api_key`,
/// when set, must come with every request.
pub fn gemini(
    knobs: &GeminiSimulatorConfig,
    models: Vec<String>,
    api_key: Option<String>,
) -> GeminiSimConfig {
    GeminiSimConfig {
        api_key,
        models,
        latency_ms: knobs.latency_ms.as_millis(),
        block_rate: knobs.block_rate,
        image_safety_rate: knobs.image_safety_rate,
        text_only_rate: knobs.text_only_rate,
        error_rates: knobs.errors.0.clone(),
        ..GeminiSimConfig::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::providers::{gemini as gemini_provider, kie as kie_provider};

    #[test]
    fn configuration_defaults_match_the_providers_and_simulators() {
        let config = Config::default();
        assert_eq!(config.gemini.model, gemini_provider::DEFAULT_MODEL);
        assert_eq!(
            config.gemini.base_url.as_str(),
            format!("{}/", gemini_provider::DEFAULT_BASE_URL)
        );
        assert_eq!(config.default_provider.as_str(), kie_provider::NAME);
        let sim = kie(&config.simulator, None);
        let plain = KieSimConfig::default();
        assert_eq!(sim.latency_ms, plain.latency_ms);
        assert_eq!(sim.duplicate_count, plain.duplicate_count);
        assert_eq!(sim.rate_limit, plain.rate_limit);
        let sim = gemini(&config.gemini.simulator, vec![], None);
        assert_eq!(sim.latency_ms, GeminiSimConfig::default().latency_ms);
    }
}
