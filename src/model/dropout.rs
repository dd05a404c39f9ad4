//! The model's randomness while training, derived from each step's key so that the GPU model and its
//! reference draw the same: the attention dropout of every layer and the NCA's fire mask.

use super::config::ModelConfig;
use crate::ops::attention::Dropout;
use crate::rng::derive_key;

/// Dropout key of layer `layer` for a step key; None (no dropout) in evaluation or at rate 0.
pub fn layer_dropout(cfg: &ModelConfig, step_key: Option<u64>, layer: usize) -> Option<Dropout> {
    step_key
        .filter(|_| cfg.attn_dropout > 0.0)
        .map(|k| Dropout { p: cfg.attn_dropout, key: derive_key(k, &[layer as u64]) })
}

/// The NCA's fire mask for a step key: its key and rate, stochastic only while training with a rate
/// below 1.
pub fn fire_mask(cfg: &ModelConfig, step_key: Option<u64>) -> (u64, f32) {
    match step_key {
        Some(key) if cfg.fire_rate < 1.0 => (derive_key(key, &[0xf12e]), cfg.fire_rate),
        _ => (0, 1.0),
    }
}
