//! The memory a training run needs, planned before anything is allocated: parameters, gradients and the
//! two Adam moments (each role in chunks the device can bind), one micro-batch's activations (kept for
//! the backward pass, with and without recomputation) and workspace, against what the device allows. A
//! plan that cannot fit is refused with the settings that would make it fit.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::config::TrainConfig;
use crate::gpu::{Arena, Gpu};
use crate::model::config::{ModelConfig, Recompute};
use crate::model::gpu::{recomputes, MicroBatchSlots};
use crate::model::params::param_infos;
use crate::ops::adamw;

/// What the device allows, as the plan needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    /// The binding offset alignment of tensors inside a chunk.
    pub align: u64,
    /// The most bytes one chunk (buffer) holds.
    pub chunk_bytes: u64,
    /// Device-local memory, where the backend reports it.
    pub memory: Option<u64>,
}

impl DeviceLimits {
    pub fn of(gpu: &Gpu) -> Self {
        Self {
            align: u64::from(gpu.limits().min_storage_buffer_offset_alignment).max(4),
            chunk_bytes: gpu.chunk_bytes(),
            memory: gpu.memory(),
        }
    }
}

/// Bytes of one micro-batch's buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MicroBatchBytes {
    /// What the backward pass reads: every layer's activations, or each layer's input.
    pub kept: u64,
    /// What every pass overwrites: activation gradients, logits, reduction scratch.
    pub workspace: u64,
}

/// The bytes a run needs, by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    pub batch: u32,
    pub seq_len: u32,
    pub recompute: Recompute,
    /// One role's bytes (parameters; gradients and each moment are the same).
    pub role: u64,
    /// Chunks per role.
    pub chunks: usize,
    /// The optimiser's block tables and norm partials.
    pub optimizer: u64,
    /// A micro-batch as configured, keeping everything, and recomputing layers.
    pub micro_batch: MicroBatchBytes,
    pub stored: MicroBatchBytes,
    pub recomputed: MicroBatchBytes,
    /// The first tensor larger than a chunk, with its bytes.
    pub oversized: Option<(String, u64)>,
    pub limits: DeviceLimits,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
}

impl MemoryPlan {
    /// The plan for training `cfg` (its vocabulary resolved) with `train`'s micro-batch and
    /// recomputation at `seq_len` tokens per sequence.
    pub fn new(cfg: &ModelConfig, train: &TrainConfig, seq_len: u32, limits: DeviceLimits) -> Self {
        Self::with(cfg, train.batch, seq_len, train.recompute, limits)
    }

    fn with(cfg: &ModelConfig, batch: u32, seq_len: u32, recompute: Recompute, limits: DeviceLimits) -> Self {
        let arena = |label: &str| Arena::with_limits(label, limits.align, limits.chunk_bytes);
        let (infos, index) = param_infos(cfg);
        let mut params = arena("params");
        let tensors: Vec<(String, usize)> =
            infos.iter().map(|info| (format!("params {}", info.name), info.len())).collect();
        params.reserve_role(&tensors, &index.runs());
        let mut oversized = params.oversized().map(|(name, bytes)| (name.to_string(), bytes));
        let blocks: u64 = infos.iter().map(|i| i.len().div_ceil(adamw::BLOCK) as u64).sum();
        let mut micro = |recompute: Recompute| {
            let (mut kept, mut work) = (arena("activations"), arena("workspace"));
            let layer = recomputes(cfg, recompute);
            MicroBatchSlots::reserve(&mut kept, &mut work, cfg, batch, seq_len, layer);
            if oversized.is_none() {
                oversized =
                    kept.oversized().or(work.oversized()).map(|(name, bytes)| (name.to_string(), bytes));
            }
            MicroBatchBytes { kept: kept.bytes(), workspace: work.bytes() }
        };
        let stored = micro(Recompute::None);
        let recomputed = micro(Recompute::Layer);
        Self {
            batch,
            seq_len,
            recompute,
            role: params.bytes(),
            chunks: params.chunk_count(),
            // A vec4<u32> table row and an f32 partial per block.
            optimizer: blocks * 20,
            micro_batch: if recompute == Recompute::Layer { recomputed } else { stored },
            stored,
            recomputed,
            oversized,
            limits,
        }
    }

    /// Every byte the plan allocates (the data stream's buffers, a few MiB, aside).
    pub fn total(&self) -> u64 {
        4 * self.role + self.optimizer + self.micro_batch.kept + self.micro_batch.workspace
    }

    /// Whether every tensor binds and, where the device reports its memory, the total fits in it.
    pub fn fits(&self) -> bool {
        self.oversized.is_none() && self.limits.memory.is_none_or(|m| self.total() <= m)
    }

    /// The plan as a few lines, for `ncalm info` and the start of `train`.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let (m, l) = (&self.micro_batch, &self.limits);
        let _ = writeln!(
            s,
            "memory plan (micro-batch {} x {} tokens, recompute {}):",
            self.batch,
            self.seq_len,
            recompute_name(self.recompute)
        );
        let _ = writeln!(
            s,
            "  parameters   {:>10}  in {} chunk(s) of at most {}",
            gib(self.role),
            self.chunks,
            gib(l.chunk_bytes)
        );
        let _ = writeln!(s, "  gradients    {:>10}", gib(self.role));
        let _ = writeln!(s, "  adam moments {:>10}", gib(2 * self.role + self.optimizer));
        let _ = writeln!(
            s,
            "  activations  {:>10}  (keeping every layer {}; recomputing layers {})",
            gib(m.kept),
            gib(self.stored.kept),
            gib(self.recomputed.kept)
        );
        let _ = writeln!(s, "  workspace    {:>10}", gib(m.workspace));
        let device = l.memory.map_or("device memory not reported by this backend".to_string(), |b| {
            format!("of {} device memory", gib(b))
        });
        let _ = writeln!(s, "  total        {:>10}  {device}", gib(self.total()));
        s
    }

    /// The plan as JSON, for tools.
    pub fn report_json(&self) -> serde_json::Value {
        serde_json::json!({
            "batch": self.batch,
            "seq_len": self.seq_len,
            "recompute": recompute_name(self.recompute),
            "parameters": self.role,
            "gradients": self.role,
            "moments": 2 * self.role + self.optimizer,
            "activations": self.micro_batch.kept,
            "activations_stored": self.stored.kept,
            "activations_recomputed": self.recomputed.kept,
            "workspace": self.micro_batch.workspace,
            "total": self.total(),
            "chunk_bytes": self.limits.chunk_bytes,
            "chunks_per_role": self.chunks,
            "device_memory": self.limits.memory,
            "fits": self.fits(),
        })
    }

    /// Fails, before any work, when the plan cannot fit, naming what does not and the settings of
    /// `section` (`train` or `text`) that would make it fit.
    pub fn check(&self, cfg: &ModelConfig, train: &TrainConfig, section: &str) -> Result<()> {
        if self.fits() {
            return Ok(());
        }
        let problem = match &self.oversized {
            Some((name, bytes)) => format!(
                "{name} needs {} ({bytes} bytes) but this device binds at most {} ({} bytes) per buffer",
                gib(*bytes),
                gib(self.limits.chunk_bytes),
                self.limits.chunk_bytes
            ),
            None => format!(
                "training needs {} but the device has {}",
                gib(self.total()),
                gib(self.limits.memory.unwrap_or(0))
            ),
        };
        let mut knobs = Vec::new();
        if self.recompute == Recompute::None {
            let plan = Self::with(cfg, self.batch, self.seq_len, Recompute::Layer, self.limits);
            if plan.fits() {
                knobs.push(format!("{section}.recompute = \"layer\" (total {})", gib(plan.total())));
            }
        }
        // The largest smaller micro-batch that fits, as configured or recomputing, preferring one that
        // divides the sequences per step, so that a larger accumulation keeps them exactly.
        let sequences = u64::from(train.batch) * u64::from(train.grad_accum);
        for recompute in [self.recompute, Recompute::Layer] {
            let fits = |b: u32| Self::with(cfg, b, self.seq_len, recompute, self.limits).fits();
            let smaller = || (1..self.batch).rev();
            let fitting = smaller()
                .find(|&b| sequences % u64::from(b) == 0 && fits(b))
                .or_else(|| smaller().find(|&b| fits(b)));
            if let Some(b) = fitting {
                let accum = sequences.div_ceil(u64::from(b));
                let also = if recompute == self.recompute {
                    String::new()
                } else {
                    format!(" with {section}.recompute = \"layer\"")
                };
                knobs.push(format!(
                    "{section}.batch = {b} with {section}.grad_accum = {accum}{also} ({} sequences per step)",
                    u64::from(b) * accum
                ));
                break;
            }
        }
        let advice = if knobs.is_empty() {
            "no micro-batch fits: the model itself is too large for this device (parameters, gradients and \
             two Adam moments take four copies of the weights)"
                .to_string()
        } else {
            format!("set {}", knobs.join(", or "))
        };
        bail!("the run does not fit this device: {problem}; {advice}\n{}", self.report())
    }
}

fn recompute_name(r: Recompute) -> &'static str {
    match r {
        Recompute::None => "none",
        Recompute::Layer => "layer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    const MIB: u64 = 1 << 20;

    fn paper(overrides: &[&str]) -> (ModelConfig, TrainConfig) {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let preset = Preset::load("paper-1.6b", &overrides).unwrap();
        let cfg = ModelConfig { vocab_size: crate::model::config::nca_vocab(10), ..preset.model };
        (cfg, preset.train)
    }

    fn h100() -> DeviceLimits {
        DeviceLimits { align: 256, chunk_bytes: (2 << 30) - 4, memory: Some(80 << 30) }
    }

    #[test]
    fn the_paper_model_fits_80_gb_by_recomputing_layers() {
        let (cfg, train) = paper(&["train.recompute=layer"]);
        let plan = MemoryPlan::new(&cfg, &train, cfg.context, h100());
        // 1.6B parameters, 4 bytes each, in every role.
        assert!((6_000 * MIB..7_000 * MIB).contains(&plan.role), "{}", plan.report());
        assert!(plan.chunks >= 3, "6.4 GB of parameters take several 2 GiB chunks");
        assert!(plan.recomputed.kept * 5 < plan.stored.kept, "{}", plan.report());
        assert!(plan.fits(), "{}", plan.report());
    }

    #[test]
    fn a_plan_that_cannot_fit_names_the_settings_that_would() {
        let (cfg, train) = paper(&["train.recompute=none"]);
        let plan = MemoryPlan::new(&cfg, &train, cfg.context, h100());
        assert!(!plan.fits(), "{}", plan.report());
        let err = plan.check(&cfg, &train, "train").unwrap_err().to_string();
        assert!(err.contains("train.recompute = \"layer\""), "{err}");
        assert!(err.contains("train.batch = 8 with train.grad_accum = 4 (32 sequences"), "{err}");

        // A tensor past the binding limit is named, whatever the memory.
        let small = DeviceLimits { align: 256, chunk_bytes: 128 * MIB, memory: None };
        let plan = MemoryPlan::new(&cfg, &train, cfg.context, small);
        let err = plan.check(&cfg, &train, "train").unwrap_err().to_string();
        assert!(err.contains("binds at most") && err.contains("train.batch = "), "{err}");
    }

    #[test]
    fn a_model_too_large_for_any_micro_batch_says_so() {
        let (cfg, train) = paper(&[]);
        let tiny_device = DeviceLimits { align: 256, chunk_bytes: (2 << 30) - 4, memory: Some(8 << 30) };
        let err = MemoryPlan::new(&cfg, &train, cfg.context, tiny_device)
            .check(&cfg, &train, "train")
            .unwrap_err()
            .to_string();
        assert!(err.contains("the model itself is too large"), "{err}");
    }
}
