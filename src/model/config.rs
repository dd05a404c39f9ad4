//! Model and training configuration: presets shipped as TOML under `assets/presets/`, with
//! `--set section.key=value` overrides on top.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::ops::activation::Activation;
use crate::ops::matmul::Precision;

/// The model's body between the embedding and the final norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama blocks: attention and a SwiGLU MLP (paper.md section 4).
    Transformer,
    /// A cellular automaton over token positions: K updates from causal neighbourhoods (docs/nca-lm.md).
    Nca,
}

impl Arch {
    pub fn name(&self) -> &'static str {
        match self {
            Arch::Transformer => "transformer",
            Arch::Nca => "nca",
        }
    }
}

/// The language model: a Llama-style decoder (paper.md section 4), or with `arch = "nca"` a neural
/// cellular automaton whose cells are the token positions. `d_model` is the width of the residual stream
/// (the cell state) either way, and `mlp_hidden` the hidden width of its MLPs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Vocabulary; 0 means "from the data" (n^4 + 2 padded to a multiple of 64 for NCA tokens).
    pub vocab_size: u32,
    pub layers: u32,
    pub d_model: u32,
    pub heads: u32,
    /// SwiGLU hidden width (the paper uses 4 d, not 8/3 d).
    pub mlp_hidden: u32,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub context: u32,
    pub attn_dropout: f32,
    /// The stage-1 head has a bias; Hugging Face's LlamaForCausalLM has none.
    pub head_bias: bool,
    pub tie_embeddings: bool,
    /// Standard deviation of the normal initialisation of linears and the embedding.
    pub init_std: f32,
    pub arch: Arch,
    /// NCA: update steps K.
    pub steps: u32,
    /// NCA: cells a cell perceives, itself and the `kernel_width - 1` before it.
    pub kernel_width: u32,
    /// NCA: one set of update weights for all K steps (false: a set per step).
    pub shared_steps: bool,
    /// NCA: the activation of the per-cell MLP.
    pub activation: Activation,
    /// NCA: the probability that a cell updates at a step while training (evaluation updates all).
    pub fire_rate: f32,
    /// NCA: keep only the states between steps and recompute the rest in the backward pass.
    pub recompute: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            vocab_size: 0,
            layers: 2,
            d_model: 64,
            heads: 4,
            mlp_hidden: 256,
            norm_eps: 1e-6,
            rope_theta: 10_000.0,
            context: 1024,
            attn_dropout: 0.0,
            head_bias: false,
            tie_embeddings: false,
            init_std: 0.02,
            arch: Arch::Transformer,
            steps: 8,
            kernel_width: 4,
            shared_steps: false,
            activation: Activation::Gelu,
            fire_rate: 1.0,
            recompute: false,
        }
    }
}

impl ModelConfig {
    pub fn head_dim(&self) -> u32 {
        self.d_model / self.heads.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let mut checks = vec![
            ("model.vocab_size", self.vocab_size, 1 << 24),
            ("model.d_model", self.d_model, 1 << 16),
            ("model.mlp_hidden", self.mlp_hidden, 1 << 18),
            ("model.context", self.context, 1 << 20),
        ];
        match self.arch {
            Arch::Transformer => {
                checks.extend([("model.layers", self.layers, 1024), ("model.heads", self.heads, 1024)])
            }
            Arch::Nca => checks
                .extend([("model.steps", self.steps, 1024), ("model.kernel_width", self.kernel_width, 1024)]),
        }
        for (name, v, max) in checks {
            if v == 0 {
                bail!("{name} must be at least 1");
            }
            if v > max {
                bail!("{name} must be at most {max}, got {v}");
            }
        }
        if self.arch == Arch::Transformer {
            if !self.d_model.is_multiple_of(self.heads) {
                bail!("model.d_model ({}) must be a multiple of model.heads ({})", self.d_model, self.heads);
            }
            let hd = self.head_dim();
            if !hd.is_multiple_of(2) || hd > 128 {
                bail!("head dimension d_model / heads = {hd} must be even and at most 128");
            }
        }
        if !(self.fire_rate > 0.0 && self.fire_rate <= 1.0) {
            bail!("model.fire_rate must be in (0, 1], got {}", self.fire_rate);
        }
        if !(0.0..1.0).contains(&self.attn_dropout) {
            bail!("model.attn_dropout must be in [0, 1), got {}", self.attn_dropout);
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 1.0 && self.init_std > 0.0) {
            bail!("model.norm_eps and model.init_std must be positive and model.rope_theta above 1");
        }
        if self.tie_embeddings && self.head_bias {
            bail!("a tied head has no bias: set model.head_bias = false with model.tie_embeddings = true");
        }
        Ok(())
    }

    /// Sets of NCA update weights: 1 when shared across steps, else one per step.
    pub fn weight_sets(&self) -> u32 {
        if self.shared_steps {
            1
        } else {
            self.steps
        }
    }

    /// Parameters of one NCA update: the perception (depthwise kernel, bias, norm) and the cell MLP.
    fn nca_update_parameters(&self) -> u64 {
        let (d, h, w) = (u64::from(self.d_model), u64::from(self.mlp_hidden), u64::from(self.kernel_width));
        w * d + 2 * d + 2 * d * h + h + d
    }

    /// Positions a prediction can see: the context for attention, K (w - 1) + 1 for the NCA.
    pub fn receptive_field(&self) -> u32 {
        match self.arch {
            Arch::Transformer => self.context,
            Arch::Nca => (self.steps * (self.kernel_width - 1) + 1).min(self.context),
        }
    }

    /// One line describing the architecture, for logs and summaries.
    pub fn describe(&self) -> String {
        match self.arch {
            Arch::Transformer => format!(
                "transformer: {} layers, d_model {}, {} heads, MLP {}, {:.2}M parameters",
                self.layers,
                self.d_model,
                self.heads,
                self.mlp_hidden,
                self.parameters() as f64 / 1e6
            ),
            Arch::Nca => format!(
                "nca: {} steps ({} weights), {} channels, kernel width {}, cell MLP {} ({}), fire rate {}, \
                 receptive field {} tokens, {:.2}M parameters",
                self.steps,
                if self.shared_steps { "shared" } else { "per-step" },
                self.d_model,
                self.kernel_width,
                self.mlp_hidden,
                self.activation.name(),
                self.fire_rate,
                self.receptive_field(),
                self.parameters() as f64 / 1e6
            ),
        }
    }

    /// Parameters in total (embedding included).
    pub fn parameters(&self) -> u64 {
        let (v, d, h, l) = (
            u64::from(self.vocab_size),
            u64::from(self.d_model),
            u64::from(self.mlp_hidden),
            u64::from(self.layers),
        );
        let body = match self.arch {
            Arch::Transformer => l * (4 * d * d + 3 * d * h + 2 * d),
            Arch::Nca => u64::from(self.weight_sets()) * self.nca_update_parameters(),
        };
        let head = if self.tie_embeddings { 0 } else { v * d + if self.head_bias { v } else { 0 } };
        v * d + body + d + head
    }

    /// Training FLOPs per token (gradients.md): 6 N + 12 L T d for the transformer, N the parameters a token
    /// multiplies (not the embedding, which it only looks up); the NCA multiplies each step's weights once
    /// per step and has no term in T.
    pub fn flops_per_token(&self, seq_len: u32) -> f64 {
        let (v, d) = (u64::from(self.vocab_size), u64::from(self.d_model));
        let head = if self.tie_embeddings { v * d } else { 0 };
        let multiplied = (self.parameters() - v * d + head) as f64;
        match self.arch {
            Arch::Transformer => {
                6.0 * multiplied
                    + 12.0 * f64::from(self.layers) * f64::from(seq_len) * f64::from(self.d_model)
            }
            Arch::Nca => {
                let body = u64::from(self.weight_sets()) * self.nca_update_parameters();
                let per_token =
                    multiplied - body as f64 + f64::from(self.steps) * self.nca_update_parameters() as f64;
                6.0 * per_token
            }
        }
    }
}

/// How gradients of micro-batches combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accumulate {
    /// The reference: each micro-batch's mean loss is summed.
    Sum,
    Mean,
}

/// Optimiser and loop settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Sequences per micro-batch.
    pub batch: u32,
    pub grad_accum: u32,
    pub accumulate: Accumulate,
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
    /// optimiser, f16 products, a dynamic loss scale) on adapters with f16 arithmetic.
    pub precision: Precision,
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
            accumulate: Accumulate::Sum,
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
    /// Stage 2's defaults (paper.md section 5, web text): AdamW 5e-4, weight decay 1e-4, 10% warm-up,
    /// cosine, clip 1.0.
    pub fn text_default() -> Self {
        Self {
            lr: 5e-4,
            weight_decay: 1e-4,
            decoupled: true,
            clip: 1.0,
            warmup_fraction: 0.1,
            accumulate: Accumulate::Mean,
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

    /// The reference's schedule (gradients.md): linear warm-up from 0, then cosine to 0 at total_steps.
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

/// Where stage-1 NCA data comes from when generated on the fly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub rules: u64,
    pub val_rules: u64,
    pub grid: u32,
    pub states: u32,
    pub band: String,
    /// Draw new training rules every epoch (the paper's README) instead of reusing them (its code).
    pub redraw_rules: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            rules: 16_000,
            val_rules: 2_000,
            grid: 12,
            states: 10,
            band: "0.5:1.0".into(),
            redraw_rules: false,
        }
    }
}

/// A preset: the model, stage 1's training (`train`) and data (`data`), and stage 2's training (`text`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preset {
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub data: DataConfig,
    pub text: TrainConfig,
}

impl Default for Preset {
    fn default() -> Self {
        Self {
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            text: TrainConfig::text_default(),
        }
    }
}

const PRESETS: &[(&str, &str)] = &[
    ("tiny", include_str!("../../assets/presets/tiny.toml")),
    ("small", include_str!("../../assets/presets/small.toml")),
    ("paper-1.6b", include_str!("../../assets/presets/paper-1.6b.toml")),
    ("nca-tiny", include_str!("../../assets/presets/nca-tiny.toml")),
    ("nca-small", include_str!("../../assets/presets/nca-small.toml")),
];

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(n, _)| *n).collect()
}

impl Preset {
    /// A shipped preset by name, or a TOML file by path, with `section.key=value` overrides.
    pub fn load(name_or_path: &str, overrides: &[String]) -> Result<Self> {
        let text = match PRESETS.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => t.to_string(),
            None if std::path::Path::new(name_or_path).is_file() => std::fs::read_to_string(name_or_path)
                .with_context(|| format!("cannot read preset file {name_or_path}"))?,
            None => bail!(
                "unknown preset {name_or_path:?}: use one of {} or a TOML file",
                preset_names().join(", ")
            ),
        };
        let mut value: toml::Table =
            toml::from_str(&text).with_context(|| format!("preset {name_or_path} is not valid TOML"))?;
        for o in overrides {
            apply_override(&mut value, o)?;
        }
        // Keys left out of [text] take stage 2's defaults, not stage 1's.
        let mut text = match toml::Value::try_from(TrainConfig::text_default())? {
            toml::Value::Table(t) => t,
            _ => unreachable!("a struct serialises to a table"),
        };
        if let Some(user) = value.remove("text") {
            let user = user
                .as_table()
                .cloned()
                .ok_or_else(|| anyhow!("preset {name_or_path}: [text] must be a table"))?;
            text.extend(user);
        }
        value.insert("text".into(), toml::Value::Table(text));
        let preset: Preset =
            toml::Value::Table(value).try_into().map_err(|e| anyhow!("preset {name_or_path}: {e}"))?;
        preset.train.validate()?;
        preset.text.validate().map_err(|e| anyhow!("{}", e.to_string().replace("train.", "text.")))?;
        Ok(preset)
    }
}

/// Applies `section.key=value`; the value is read as TOML (number, boolean, string) or as a bare string.
fn apply_override(table: &mut toml::Table, text: &str) -> Result<()> {
    let Some((path, raw)) = text.split_once('=') else {
        bail!("--set expects section.key=value (e.g. model.layers=4), got {text:?}");
    };
    let parts: Vec<&str> = path.trim().split('.').collect();
    if parts.len() != 2 || !["model", "train", "data", "text"].contains(&parts[0]) {
        bail!("--set {path}: the key must be model.NAME, train.NAME, data.NAME or text.NAME");
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let section = table
        .entry(parts[0].to_string())
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .ok_or_else(|| anyhow!("preset section {} is not a table", parts[0]))?;
    section.insert(parts[1].to_string(), value);
    Ok(())
}

/// The NCA-stage vocabulary: n^4 + 2 ids padded to a multiple of 64.
pub fn nca_vocab(states: u32) -> u32 {
    (states.pow(4) + 2).next_multiple_of(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_load_and_overrides_apply() {
        for name in preset_names() {
            let p = Preset::load(name, &[]).unwrap();
            let m = ModelConfig { vocab_size: 10_048, ..p.model };
            m.validate().unwrap();
        }
        let p = Preset::load("paper-1.6b", &[]).unwrap();
        assert_eq!(
            (p.model.layers, p.model.d_model, p.model.heads, p.model.mlp_hidden),
            (24, 2048, 32, 8192)
        );
        let p = Preset::load(
            "tiny",
            &["model.layers=3".into(), "train.lr=5e-4".into(), "data.band=0.3:0.4".into()],
        )
        .unwrap();
        assert_eq!((p.model.layers, p.train.lr, p.data.band.as_str()), (3, 5e-4, "0.3:0.4"));
        assert!(Preset::load("tiny", &["model.layerz=3".into()]).unwrap_err().to_string().contains("layerz"));
        assert!(Preset::load("huge", &[]).is_err());
        assert!(Preset::load("tiny", &["layers=3".into()]).is_err());
    }

    #[test]
    fn vocab_and_parameter_counts() {
        assert_eq!(nca_vocab(10), 10_048);
        let m = ModelConfig { vocab_size: 10_048, ..Preset::load("paper-1.6b", &[]).unwrap().model };
        // 24 blocks of 4 d^2 + 3 d h = 16.8M + 50.3M, plus embedding and head: about 1.66B.
        let p = m.parameters() as f64;
        assert!((1.6e9..1.7e9).contains(&p), "{p}");
    }

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
}
