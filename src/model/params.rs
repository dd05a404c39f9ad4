//! The model's parameters: names (Hugging Face Llama's, so checkpoints load there), shapes, and
//! initialisation, plus their index layout that the GPU model and the reference share.

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::config::{Arch, ModelConfig};
use crate::rng::{derive_key, Stream};

/// How a tensor starts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Init {
    Normal(f32),
    Uniform(f32),
    Ones,
    Zeros,
}

/// Adam's first and second moments, tensor by tensor in parameter order.
pub type Moments = (Vec<Vec<f32>>, Vec<Vec<f32>>);

#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamInfo {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Matrices get weight decay when decay is limited to 2-D tensors.
    pub fn is_matrix(&self) -> bool {
        self.shape.len() == 2
    }
}

/// Positions of one block's tensors in the parameter list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerIndex {
    pub attn_norm: usize,
    pub q: usize,
    pub k: usize,
    pub v: usize,
    pub o: usize,
    pub mlp_norm: usize,
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

impl LayerIndex {
    /// The query, key and value projections, consecutive in the list: one `[3d, d]` matrix on the GPU,
    /// so that one product gives all three.
    pub fn qkv(&self) -> std::ops::Range<usize> {
        debug_assert!(self.k == self.q + 1 && self.v == self.k + 1);
        self.q..self.v + 1
    }

    /// The gate and up projections, consecutive in the list: one `[2 * hidden, d]` matrix on the GPU.
    pub fn gate_up(&self) -> std::ops::Range<usize> {
        debug_assert!(self.up == self.gate + 1);
        self.gate..self.up + 1
    }
}

/// Positions of one NCA update's tensors: the perception (a causal depthwise convolution, then a norm)
/// and the per-cell MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellIndex {
    pub conv: usize,
    pub conv_bias: usize,
    pub norm: usize,
    pub fc1: usize,
    pub fc1_bias: usize,
    pub fc2: usize,
    pub fc2_bias: usize,
}

/// Positions of every tensor in the parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamIndex {
    pub embed: usize,
    /// The transformer's blocks (empty for the NCA).
    pub layers: Vec<LayerIndex>,
    /// The NCA's update of each step, K of them; shared weights repeat one set (empty for the transformer).
    pub cells: Vec<CellIndex>,
    pub final_norm: usize,
    /// The head's weight: its own tensor, or the embedding when tied.
    pub head: usize,
    pub head_bias: Option<usize>,
}

impl ParamIndex {
    /// The runs of tensors the GPU packs end to end and multiplies as one matrix: each block's
    /// projections of q, k and v, and of gate and up.
    pub fn runs(&self) -> Vec<std::ops::Range<usize>> {
        self.layers.iter().flat_map(|l| [l.qkv(), l.gate_up()]).collect()
    }
}

/// The parameter list in a fixed order, with Hugging Face Llama names (the NCA's updates are named
/// `model.layers.{set}.*` too, so layer ranges and parts select them the same way).
pub fn param_infos(cfg: &ModelConfig) -> (Vec<ParamInfo>, ParamIndex) {
    let (v, d, h) = (cfg.vocab_size as usize, cfg.d_model as usize, cfg.mlp_hidden as usize);
    let std = cfg.init_std;
    let mut infos = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| {
        infos.push(ParamInfo { name, shape, init });
        infos.len() - 1
    };
    let embed = push("model.embed_tokens.weight".into(), vec![v, d], Init::Normal(std));
    let mut layers = Vec::new();
    let mut cells = Vec::new();
    if cfg.arch == Arch::Nca {
        let w = cfg.kernel_width as usize;
        let sets: Vec<CellIndex> = (0..cfg.weight_sets())
            .map(|l| {
                let p = |s: &str| format!("model.layers.{l}.{s}");
                CellIndex {
                    // PyTorch's Conv1d default bound, 1/sqrt(fan in); the norm that follows fixes the scale.
                    conv: push(p("conv.weight"), vec![w, d], Init::Uniform(1.0 / (w as f32).sqrt())),
                    conv_bias: push(p("conv.bias"), vec![d], Init::Zeros),
                    norm: push(p("perception_layernorm.weight"), vec![d], Init::Ones),
                    fc1: push(p("mlp.fc1.weight"), vec![h, d], Init::Normal(std)),
                    fc1_bias: push(p("mlp.fc1.bias"), vec![h], Init::Zeros),
                    fc2: push(p("mlp.fc2.weight"), vec![d, h], Init::Normal(std)),
                    fc2_bias: push(p("mlp.fc2.bias"), vec![d], Init::Zeros),
                }
            })
            .collect();
        cells = (0..cfg.steps as usize).map(|s| sets[s % sets.len()]).collect();
    }
    let transformer_layers = if cfg.arch == Arch::Transformer { cfg.layers } else { 0 };
    for l in 0..transformer_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        layers.push(LayerIndex {
            attn_norm: push(p("input_layernorm.weight"), vec![d], Init::Ones),
            q: push(p("self_attn.q_proj.weight"), vec![d, d], Init::Normal(std)),
            k: push(p("self_attn.k_proj.weight"), vec![d, d], Init::Normal(std)),
            v: push(p("self_attn.v_proj.weight"), vec![d, d], Init::Normal(std)),
            o: push(p("self_attn.o_proj.weight"), vec![d, d], Init::Normal(std)),
            mlp_norm: push(p("post_attention_layernorm.weight"), vec![d], Init::Ones),
            gate: push(p("mlp.gate_proj.weight"), vec![h, d], Init::Normal(std)),
            up: push(p("mlp.up_proj.weight"), vec![h, d], Init::Normal(std)),
            down: push(p("mlp.down_proj.weight"), vec![d, h], Init::Normal(std)),
        });
    }
    let final_norm = push("model.norm.weight".into(), vec![d], Init::Ones);
    // The reference builds its head as a Linear under Hugging Face's initialisation: N(0, std), bias 0.
    let head =
        if cfg.tie_embeddings { embed } else { push("lm_head.weight".into(), vec![v, d], Init::Normal(std)) };
    let head_bias = cfg.head_bias.then(|| push("lm_head.bias".into(), vec![v], Init::Zeros));
    (infos, ParamIndex { embed, layers, cells, final_norm, head, head_bias })
}

/// Parameter values on the host, in the order of [`param_infos`].
#[derive(Clone, Debug, PartialEq)]
pub struct HostParams {
    pub infos: Vec<ParamInfo>,
    pub index: ParamIndex,
    pub values: Vec<Vec<f32>>,
}

impl HostParams {
    /// Draws every tensor from its own stream of `seed`, so one tensor's values do not depend on the others.
    pub fn init(cfg: &ModelConfig, seed: u64) -> Self {
        let (infos, index) = param_infos(cfg);
        let keyed: Vec<(usize, &ParamInfo)> = infos.iter().enumerate().collect();
        let values = keyed
            .par_iter()
            .map(|&(i, info)| init_tensor(info, derive_key(seed, &[0x1417, i as u64])))
            .collect();
        Self { infos, index, values }
    }

    /// A checkpoint's parameters: `values` (as a checkpoint stores them, in the order of [`param_infos`])
    /// laid out as `cfg` declares, each tensor checked to be present and of its shape's size.
    pub fn from_checkpoint(cfg: &ModelConfig, values: Vec<Vec<f32>>) -> Result<Self> {
        let (infos, index) = param_infos(cfg);
        if let Some(missing) = infos.get(values.len()) {
            bail!(
                "the checkpoint's tensor {:?} is missing ({} of {} present)",
                missing.name,
                values.len(),
                infos.len()
            );
        }
        if values.len() > infos.len() {
            bail!("the checkpoint holds {} tensors, the configuration has {}", values.len(), infos.len());
        }
        for (info, v) in infos.iter().zip(&values) {
            if v.len() != info.len() {
                bail!(
                    "the checkpoint's tensor {:?} holds {} values, its shape {:?} needs {}",
                    info.name,
                    v.len(),
                    info.shape,
                    info.len()
                );
            }
        }
        Ok(Self { infos, index, values })
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.infos.iter().position(|i| i.name == name)
    }

    pub fn total(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }
}

pub fn init_tensor(info: &ParamInfo, key: u64) -> Vec<f32> {
    let n = info.len();
    match info.init {
        Init::Ones => vec![1.0; n],
        Init::Zeros => vec![0.0; n],
        Init::Normal(std) => {
            let mut s = Stream::new(key, 0);
            (0..n).map(|_| (s.next_normal() * f64::from(std)) as f32).collect()
        }
        Init::Uniform(bound) => {
            let mut s = Stream::new(key, 0);
            (0..n).map(|_| ((s.next_open_f64() * 2.0 - 1.0) * f64::from(bound)) as f32).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_shapes_and_init() {
        let cfg = ModelConfig {
            vocab_size: 100,
            layers: 2,
            d_model: 16,
            heads: 2,
            mlp_hidden: 24,
            head_bias: true,
            ..Default::default()
        };
        let p = HostParams::init(&cfg, 1);
        assert_eq!(p.total() as u64, cfg.parameters());
        assert_eq!(p.infos[p.index.layers[1].down].name, "model.layers.1.mlp.down_proj.weight");
        assert_eq!(p.infos[p.index.layers[1].down].shape, vec![16, 24]);
        assert!(p.values[p.index.final_norm].iter().all(|&w| w == 1.0));
        assert!(p.values[p.index.head_bias.unwrap()].iter().all(|&w| w == 0.0));
        let e = &p.values[p.index.embed];
        let std = (e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
        assert_eq!(p, HostParams::init(&cfg, 1));
        let tied = ModelConfig { tie_embeddings: true, head_bias: false, ..cfg };
        let (infos, index) = param_infos(&tied);
        assert_eq!(index.head, index.embed);
        assert_eq!(infos.len(), 1 + 2 * 9 + 1);
    }

    #[test]
    fn checkpoint_values_are_checked() {
        let cfg = ModelConfig {
            vocab_size: 20,
            layers: 1,
            d_model: 8,
            heads: 2,
            mlp_hidden: 12,
            ..Default::default()
        };
        let p = HostParams::init(&cfg, 4);
        assert_eq!(HostParams::from_checkpoint(&cfg, p.values.clone()).unwrap(), p);
        let mut short = p.values.clone();
        short.pop();
        let err = HostParams::from_checkpoint(&cfg, short).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{:?}", p.infos.last().unwrap().name)) && err.contains("missing"),
            "{err}"
        );
        let mut extra = p.values.clone();
        extra.push(vec![0.0]);
        assert!(HostParams::from_checkpoint(&cfg, extra).is_err());
        let mut wrong = p.values.clone();
        wrong[0].pop();
        let err = HostParams::from_checkpoint(&cfg, wrong).unwrap_err().to_string();
        assert!(err.contains("model.embed_tokens.weight") && err.contains("[20, 8]"), "{err}");
    }

    #[test]
    fn nca_steps_share_or_own_their_weights() {
        let cfg = ModelConfig {
            vocab_size: 50,
            d_model: 8,
            mlp_hidden: 12,
            arch: Arch::Nca,
            steps: 3,
            kernel_width: 5,
            shared_steps: true,
            ..Default::default()
        };
        let p = HostParams::init(&cfg, 2);
        assert_eq!(p.total() as u64, cfg.parameters());
        assert!(p.index.layers.is_empty());
        assert_eq!(p.index.cells.len(), 3);
        assert!(p.index.cells.iter().all(|c| *c == p.index.cells[0]));
        assert_eq!(p.infos[p.index.cells[2].conv].shape, vec![5, 8]);
        assert_eq!(p.infos[p.index.cells[2].fc2].name, "model.layers.0.mlp.fc2.weight");
        let own = ModelConfig { shared_steps: false, ..cfg };
        let q = HostParams::init(&own, 2);
        assert_eq!(q.total() as u64, own.parameters());
        assert_eq!(q.infos[q.index.cells[2].fc2].name, "model.layers.2.mlp.fc2.weight");
        assert_eq!(own.receptive_field(), 13);
    }
}
