//! Stage 2's starting point (docs/method.md section 5): the stage-1 blocks and final norm, with a freshly
//! created embedding and head for the language vocabulary. The scratch baseline builds its embedding and
//! head the same way from the same seed, so the arms of a comparison differ only in their blocks.
//! Ablations re-initialise parts of a layer range; frozen parts are left out of the optimiser.

use std::ops::Range;

use anyhow::{bail, ensure, Result};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::params::{init_tensor, HostParams, Init, ParamInfo};
use crate::rng::derive_key;

/// A part of the model an ablation acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Attn,
    /// The NCA's perception convolution, its counterpart of attention.
    Conv,
    Mlp,
    Norm,
    Embed,
    Head,
}

impl Part {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.trim() {
            "attn" => Part::Attn,
            "conv" => Part::Conv,
            "mlp" => Part::Mlp,
            "norm" => Part::Norm,
            "embed" => Part::Embed,
            "head" => Part::Head,
            other => bail!("unknown model part {other:?}: expected attn, conv, mlp, norm, embed or head"),
        })
    }

    /// Whether parameter `name` belongs to this part within `layers` (all layers when None).
    pub fn covers(&self, name: &str, layers: &Option<Range<u32>>) -> bool {
        let in_range = |n: &str| match (layer_of(n), layers) {
            (Some(l), Some(r)) => r.contains(&l),
            (Some(_), None) => true,
            (None, _) => false,
        };
        match self {
            Part::Attn => name.contains(".self_attn.") && in_range(name),
            Part::Conv => name.contains(".conv.") && in_range(name),
            Part::Mlp => name.contains(".mlp.") && in_range(name),
            Part::Norm => {
                (name.ends_with("layernorm.weight") && in_range(name))
                    || (name == "model.norm.weight" && layers.is_none())
            }
            Part::Embed => name == "model.embed_tokens.weight",
            Part::Head => name.starts_with("lm_head."),
        }
    }
}

fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}

/// Parses a layer range "A..B" (B exclusive) or a single layer "A".
pub fn parse_layers(text: &str) -> Result<Range<u32>> {
    let parse = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| anyhow::anyhow!("layer range {text:?}: {s:?} is not a layer number"))
    };
    match text.split_once("..") {
        Some((a, b)) => {
            let r = parse(a)?..parse(b)?;
            ensure!(r.start < r.end, "layer range {text:?} is empty");
            Ok(r)
        }
        None => {
            let a = parse(text)?;
            let end = a
                .checked_add(1)
                .ok_or_else(|| anyhow::anyhow!("layer range {text:?}: layer {a} is too large"))?;
            Ok(a..end)
        }
    }
}

/// How stage 2 starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stage2Init {
    /// Standard deviation of the new embedding (the reference: 1.0).
    pub embed_std: f32,
    pub reinit: Vec<Part>,
    pub freeze: Vec<Part>,
    /// Layers the ablations act on (all when None).
    pub layers: Option<Range<u32>>,
}

impl Default for Stage2Init {
    fn default() -> Self {
        Self { embed_std: 1.0, reinit: Vec::new(), freeze: Vec::new(), layers: None }
    }
}

/// Stage-2 parameters. `stage1` holds the blocks to keep (None: the scratch baseline). The embedding
/// (N(0, embed_std)) and the head (uniform +-1/sqrt(d), no bias) come from `seed` alone.
pub fn stage2_params(
    cfg: &ModelConfig,
    seed: u64,
    init: &Stage2Init,
    stage1: Option<(&[ParamInfo], &[Vec<f32>])>,
) -> Result<HostParams> {
    ensure!(!cfg.head_bias, "the stage-2 head has no bias");
    let mut params = HostParams::init(cfg, seed);
    let d = cfg.d_model as f32;
    let embed_info =
        ParamInfo { init: Init::Normal(init.embed_std), ..params.infos[params.index.embed].clone() };
    params.values[params.index.embed] = init_tensor(&embed_info, derive_key(seed, &[0x57a9e2, 0]));
    if params.index.head != params.index.embed {
        let head_info =
            ParamInfo { init: Init::Uniform(1.0 / d.sqrt()), ..params.infos[params.index.head].clone() };
        params.values[params.index.head] = init_tensor(&head_info, derive_key(seed, &[0x57a9e2, 1]));
    }
    if let Some((infos, values)) = stage1 {
        for (i, info) in params.infos.iter().enumerate() {
            if Part::Embed.covers(&info.name, &None) || Part::Head.covers(&info.name, &None) {
                continue;
            }
            let Some(j) = infos.iter().position(|s| s.name == info.name) else {
                bail!("the stage-1 checkpoint has no tensor {:?}, which the stage-2 model needs", info.name);
            };
            if infos[j].shape != info.shape {
                bail!(
                    "tensor {:?} has shape {:?} in the stage-1 checkpoint but {:?} in the stage-2 model",
                    info.name,
                    infos[j].shape,
                    info.shape
                );
            }
            if !init.reinit.iter().any(|p| p.covers(&info.name, &init.layers)) {
                params.values[i] = values[j].clone();
            }
        }
    }
    Ok(params)
}

/// Indices of the parameters the optimiser must leave alone.
pub fn frozen(infos: &[ParamInfo], init: &Stage2Init) -> Vec<usize> {
    infos
        .iter()
        .enumerate()
        .filter(|(_, i)| init.freeze.iter().any(|p| p.covers(&i.name, &init.layers)))
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vocab: u32, head_bias: bool) -> ModelConfig {
        ModelConfig {
            vocab_size: vocab,
            layers: 3,
            d_model: 16,
            heads: 2,
            mlp_hidden: 24,
            head_bias,
            ..Default::default()
        }
    }

    #[test]
    fn blocks_are_kept_and_embedding_and_head_are_new() {
        let s1 = HostParams::init(&cfg(10_048, true), 1);
        let init = Stage2Init::default();
        let s2 = stage2_params(&cfg(257, false), 9, &init, Some((&s1.infos, &s1.values))).unwrap();
        let scratch = stage2_params(&cfg(257, false), 9, &init, None).unwrap();
        for (i, info) in s2.infos.iter().enumerate() {
            let j = s1.find(&info.name);
            match info.name.as_str() {
                "model.embed_tokens.weight" | "lm_head.weight" => {
                    assert_eq!(s2.values[i], scratch.values[i], "{}", info.name)
                }
                _ => assert_eq!(s2.values[i], s1.values[j.unwrap()], "{}", info.name),
            }
        }
        let e = &s2.values[s2.index.embed];
        let std = (e.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
        assert!((std - 1.0).abs() < 0.05, "{std}");
        let bound = 1.0 / 4.0;
        assert!(s2.values[s2.index.head].iter().all(|w| w.abs() <= bound));
    }

    #[test]
    fn ablations_and_freezing_select_parts() {
        let s1 = HostParams::init(&cfg(100, true), 1);
        let init = Stage2Init {
            reinit: vec![Part::Attn],
            layers: Some(parse_layers("1..3").unwrap()),
            ..Default::default()
        };
        let s2 = stage2_params(&cfg(100, false), 2, &init, Some((&s1.infos, &s1.values))).unwrap();
        let q = |p: &HostParams, l: u32| {
            p.values[p.find(&format!("model.layers.{l}.self_attn.q_proj.weight")).unwrap()].clone()
        };
        assert_eq!(q(&s2, 0), q(&s1, 0));
        assert_ne!(q(&s2, 1), q(&s1, 1));
        let frozen =
            frozen(&s2.infos, &Stage2Init { freeze: vec![Part::Mlp, Part::Embed], ..Default::default() });
        assert_eq!(frozen.len(), 3 * 3 + 1);
        assert!(parse_layers("3..1").is_err() && Part::parse("ffn").is_err());
    }

    #[test]
    fn incompatible_shapes_name_the_tensor() {
        let s1 = HostParams::init(&cfg(100, true), 1);
        let wide = ModelConfig { mlp_hidden: 32, ..cfg(100, false) };
        let err = stage2_params(&wide, 2, &Stage2Init::default(), Some((&s1.infos, &s1.values)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.layers.0.mlp.gate_proj.weight")
                && err.contains("[24, 16]")
                && err.contains("[32, 16]"),
            "{err}"
        );
    }
}
