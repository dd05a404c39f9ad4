//! A training stage's settings: the optimiser, the learning-rate schedule and the loop (`[train]` for
//! stage 1 and `[text]` for stage 2 of a preset).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::model::config::Recompute;
use crate::ops::matmul::Precision;

/// How the gradients of a step's micro-batches combine into the step's gradient (`train.accumulate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MicroBatchReduction {
    /// The reference: each micro-batch's mean loss is summed.
    Sum,
    /// The micro-batches' mean losses are averaged.
    Mean,
}

/// Optimiser and loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch: u32,
    pub grad_accum: u32,
    pub accumulate: MicroBatchReduction,
    pub lr: f32,
    pub warmup_steps: u64,
    /// Warm-up as a share of `total_steps`; when above 0 it replaces `warmup_steps`.
    pub warmup_fraction: f32,
    pub total_steps: u64,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// AdamW (decoupled decay) rather than Adam with L2.
    pub decoupled: bool,
    /// Decay only 2-D tensors (matrices), not norms and biases.
    pub decay_2d_only: bool,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub clip: f32,
    /// The arithmetic of the large matmuls: "f32", or "f16" (mixed precision: f32 weights and
    /// optimiser, f16 products, a dynamic loss scale) on adapters with f16 arithmetic. With "f16",
    /// attention also runs on cooperative matrices where the adapter has them and tuning finds that
    /// faster.
    pub precision: Precision,
    /// What the backward pass recomputes rather than keeps: "none", or "layer" (each layer's input
    /// only; a third more arithmetic for a fraction of the activation memory). Results are the same.
    pub recompute: Recompute,
    /// The loss scale that half-precision training starts from (halved on overflow, doubled after 2000
    /// clean steps).
    pub loss_scale: f32,
    pub eval_every: u64,
    pub eval_sequences: u32,
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            batch: 16,
            grad_accum: 2,
            accumulate: MicroBatchReduction::Sum,
            lr: 1e-4,
            warmup_steps: 5000,
            warmup_fraction: 0.0,
            total_steps: 50_000,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            decay_2d_only: false,
            clip: 0.0,
            precision: Precision::F32,
            recompute: Recompute::None,
            loss_scale: 65536.0,
            eval_every: 500,
            eval_sequences: 64,
            checkpoint_every: 1000,
            log_every: 10,
            seed: 0,
        }
    }
}

impl TrainConfig {
    /// Stage 2's defaults (docs/method.md section 5, web text): AdamW 5e-4, weight decay 1e-4, 10% warm-up,
    /// cosine, clip 1.0.
    pub fn text_default() -> Self {
        Self {
            lr: 5e-4,
            weight_decay: 1e-4,
            decoupled: true,
            clip: 1.0,
            warmup_fraction: 0.1,
            accumulate: MicroBatchReduction::Mean,
            ..Self::default()
        }
    }

    /// Warm-up steps in effect.
    pub fn warmup(&self) -> u64 {
        if self.warmup_fraction > 0.0 {
            (f64::from(self.warmup_fraction) * self.total_steps as f64).round() as u64
        } else {
            self.warmup_steps
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.grad_accum == 0 {
            bail!("train.batch and train.grad_accum must be at least 1");
        }
        if self.total_steps == 0 {
            bail!("train.total_steps must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            bail!("train.lr must be a non-negative number, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) || self.eps <= 0.0 {
            bail!("train.beta1 and train.beta2 must be in [0, 1) and train.eps positive");
        }
        if self.weight_decay < 0.0 || self.clip < 0.0 {
            bail!("train.weight_decay and train.clip must not be negative");
        }
        if !(self.loss_scale.is_finite() && self.loss_scale >= 1.0) {
            bail!("train.loss_scale must be a number of at least 1, got {}", self.loss_scale);
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            bail!("train.warmup_fraction must be in [0, 1), got {}", self.warmup_fraction);
        }
        if self.log_every == 0 || self.eval_every == 0 || self.checkpoint_every == 0 {
            bail!("train.log_every, train.eval_every and train.checkpoint_every must be at least 1");
        }
        Ok(())
    }

    /// The reference's schedule (docs/gradients.md, "Schedule"): linear warm-up from 0, then cosine to 0
    /// at total_steps.
    pub fn lr_at(&self, step: u64) -> f32 {
        let base = f64::from(self.lr);
        let warmup = self.warmup();
        let lr = if step < warmup {
            base * step as f64 / warmup as f64
        } else if self.total_steps <= warmup {
            base
        } else {
            let progress = (step - warmup) as f64 / (self.total_steps - warmup) as f64;
            base * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
        };
        lr as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_fraction_replaces_warmup_steps() {
        let t =
            TrainConfig { warmup_fraction: 0.1, warmup_steps: 999, total_steps: 200, ..Default::default() };
        assert_eq!(t.warmup(), 20);
        assert!((t.lr_at(10) / t.lr - 0.5).abs() < 1e-6);
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let t = TrainConfig { lr: 1.0, warmup_steps: 10, total_steps: 110, ..Default::default() };
        assert_eq!(t.lr_at(0), 0.0);
        assert!((t.lr_at(5) - 0.5).abs() < 1e-6);
        assert!((t.lr_at(10) - 1.0).abs() < 1e-6);
        assert!((t.lr_at(60) - 0.5).abs() < 1e-6);
        assert!(t.lr_at(110).abs() < 1e-6);
    }

    #[test]
    fn micro_batch_reduction_keeps_its_names() {
        let t: TrainConfig = toml::from_str("accumulate = \"mean\"").unwrap();
        assert_eq!(t.accumulate, MicroBatchReduction::Mean);
        let v = toml::Value::try_from(TrainConfig::default()).unwrap();
        assert_eq!(v["accumulate"].as_str(), Some("sum"));
    }
}
