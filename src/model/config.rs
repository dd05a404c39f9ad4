//! The model's configuration (`[model]` of a preset, [`crate::config::Preset`]): the architecture and
//! its sizes, with what follows from them (parameter counts, FLOPs, the receptive field).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::ops::activation::Activation;

/// The model's body between the embedding and the final norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama blocks: attention and a SwiGLU MLP (docs/method.md section 4).
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

/// The language model: a Llama-style decoder (docs/method.md section 4), or with `arch = "nca"` a neural
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

    /// Training FLOPs per token (docs/gradients.md, "Cost per token"): 6 N + 12 L T d for the transformer,
    /// N the parameters a token multiplies (not the embedding, which it only looks up); the NCA multiplies
    /// each step's weights once per step and has no term in T.
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

/// What the backward pass recomputes instead of keeping from the forward pass (`train.recompute`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every layer's activations.
    #[default]
    None,
    /// Keep each layer's input only (each NCA step's state); the backward pass reruns the layer's
    /// forward, with the same dropout, just before its backward.
    Layer,
}

/// The NCA-stage vocabulary: n^4 + 2 ids padded to a multiple of 64.
pub fn nca_vocab(states: u32) -> u32 {
    (states.pow(4) + 2).next_multiple_of(64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn vocab_and_parameter_counts() {
        assert_eq!(nca_vocab(10), 10_048);
        let m = ModelConfig { vocab_size: 10_048, ..Preset::load("paper-1.6b", &[]).unwrap().model };
        // 24 blocks of 4 d^2 + 3 d h = 16.8M + 50.3M, plus embedding and head: about 1.66B.
        let p = m.parameters() as f64;
        assert!((1.6e9..1.7e9).contains(&p), "{p}");
    }
}
