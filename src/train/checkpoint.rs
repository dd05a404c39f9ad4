//! Checkpoints: a directory holding `model.safetensors` (Hugging Face Llama tensor names), `config.json`
//! (LlamaConfig form for the transformer, plus ncalm's own settings), `optimizer.safetensors` (Adam
//! moments) and `trainer.json` (step, tokens, schedule, data cursor). Written into a temporary directory
//! and renamed into place, so a crash leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::model::config::Arch;
use crate::model::params::Moments;
use crate::model::{ModelConfig, ParamInfo};
use crate::ops::loss_scale::ScaleState;
use crate::util::write_atomic;

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TRAINER_FILE: &str = "trainer.json";
/// A run directory's pointer to its newest checkpoint.
pub const LATEST_FILE: &str = "latest";

/// Where training stands, enough to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimiser steps taken.
    pub step: u64,
    pub tokens: u64,
    /// The settings of the run (preset after overrides), checked on resume.
    pub settings: serde_json::Value,
    /// Half precision: the dynamic loss scale, so a resumed run continues with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<ScaleState>,
}

/// Hugging Face LlamaConfig fields for a transformer, with ncalm's full configuration under "ncalm". The
/// NCA has no Hugging Face counterpart: its config names only its own architecture and sizes.
pub fn hf_config(cfg: &ModelConfig) -> serde_json::Value {
    if cfg.arch == Arch::Nca {
        return serde_json::json!({
            "architectures": ["NcaForCausalLM"],
            "model_type": "ncalm-nca",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.d_model,
            "intermediate_size": cfg.mlp_hidden,
            "torch_dtype": "float32",
            "ncalm": cfg,
        });
    }
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.heads,
        "head_dim": cfg.head_dim(),
        "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": cfg.attn_dropout,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "torch_dtype": "float32",
        "ncalm": cfg,
    })
}

fn tensor_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn to_safetensors(infos: &[ParamInfo], values: &[Vec<f32>]) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = values.iter().map(|v| tensor_bytes(v)).collect();
    let views: Vec<(String, TensorView)> = infos
        .iter()
        .zip(&bytes)
        .map(|(i, b)| Ok((i.name.clone(), TensorView::new(Dtype::F32, i.shape.clone(), b)?)))
        .collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize(views, Some(meta))?)
}

/// Reads tensors named as `infos` from a safetensors file, checking that none is missing, extra or
/// mis-shaped.
pub fn read_safetensors(path: &Path, infos: &[ParamInfo]) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{} is not a valid safetensors file: {e}", path.display()))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    if let Some(extra) = names.iter().find(|n| !infos.iter().any(|i| &i.name == *n)) {
        bail!("{}: unexpected tensor {extra:?} (the configuration has no such parameter)", path.display());
    }
    infos
        .iter()
        .map(|info| {
            let t = file
                .tensor(&info.name)
                .map_err(|_| anyhow::anyhow!("{}: tensor {:?} is missing", path.display(), info.name))?;
            if t.shape() != info.shape.as_slice() {
                bail!(
                    "{}: tensor {:?} has shape {:?}, the configuration needs {:?}",
                    path.display(),
                    info.name,
                    t.shape(),
                    info.shape
                );
            }
            if t.dtype() != Dtype::F32 {
                bail!("{}: tensor {:?} is {:?}, expected F32", path.display(), info.name, t.dtype());
            }
            Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
        })
        .collect()
}

/// Everything a checkpoint holds.
pub struct Checkpoint {
    pub config: ModelConfig,
    pub params: Vec<Vec<f32>>,
    /// Adam first and second moments, parameter by parameter.
    pub moments: Option<Moments>,
    pub state: TrainerState,
}

/// Where `save` puts the checkpoint of `step` in `run`.
pub fn path_of(run: &Path, step: u64) -> PathBuf {
    run.join(format!("checkpoint-{step:08}"))
}

/// Writes `run/checkpoint-STEP` atomically and points `run/latest` at it; returns its path.
pub fn save(run: &Path, infos: &[ParamInfo], ckpt: &Checkpoint) -> Result<PathBuf> {
    std::fs::create_dir_all(run).with_context(|| format!("cannot create {}", run.display()))?;
    let final_dir = path_of(run, ckpt.state.step);
    let name = final_dir.file_name().expect("a checkpoint has a name").to_string_lossy().into_owned();
    let temp = run.join(format!(".{name}.{}.partial", std::process::id()));
    let _ = std::fs::remove_dir_all(&temp);
    std::fs::create_dir_all(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    let result = (|| -> Result<()> {
        write_atomic(&temp.join(MODEL_FILE), &to_safetensors(infos, &ckpt.params)?)?;
        if let Some((m, v)) = &ckpt.moments {
            let mut names = Vec::new();
            let mut values = Vec::new();
            for (kind, set) in [("exp_avg", m), ("exp_avg_sq", v)] {
                for (info, t) in infos.iter().zip(set) {
                    names.push(ParamInfo { name: format!("{kind}.{}", info.name), ..info.clone() });
                    values.push(t.clone());
                }
            }
            write_atomic(&temp.join(OPTIMIZER_FILE), &to_safetensors(&names, &values)?)?;
        }
        write_atomic(
            &temp.join(CONFIG_FILE),
            serde_json::to_string_pretty(&hf_config(&ckpt.config))?.as_bytes(),
        )?;
        write_atomic(&temp.join(TRAINER_FILE), serde_json::to_string_pretty(&ckpt.state)?.as_bytes())?;
        // Make the directory's entries durable before it becomes visible under its final name.
        if let Ok(d) = std::fs::File::open(&temp) {
            let _ = d.sync_all();
        }
        let old = run.join(format!(".{name}.{}.old", std::process::id()));
        if final_dir.exists() {
            std::fs::rename(&final_dir, &old)?;
        }
        std::fs::rename(&temp, &final_dir)
            .with_context(|| format!("cannot move the checkpoint to {}", final_dir.display()))?;
        let _ = std::fs::remove_dir_all(&old);
        write_atomic(&run.join(LATEST_FILE), name.as_bytes())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    result.with_context(|| format!("writing checkpoint {}", final_dir.display()))?;
    Ok(final_dir)
}

/// The checkpoint a path names: a checkpoint directory, or a run directory (its latest checkpoint).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(MODEL_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    let latest = path.join(LATEST_FILE);
    let name = std::fs::read_to_string(&latest).with_context(|| {
        format!(
            "{} is neither a checkpoint (no {MODEL_FILE}) nor a run with checkpoints (no {LATEST_FILE})",
            path.display()
        )
    })?;
    let dir = path.join(name.trim());
    if !dir.join(MODEL_FILE).exists() {
        bail!("{} points at {}, which holds no {MODEL_FILE}", latest.display(), dir.display());
    }
    Ok(dir)
}

/// Loads a checkpoint (parameters checked against the configuration it declares).
pub fn load(path: &Path) -> Result<Checkpoint> {
    let dir = resolve(path)?;
    let cfg_path = dir.join(CONFIG_FILE);
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", cfg_path.display()))?;
    let config: ModelConfig = serde_json::from_value(cfg_json.get("ncalm").cloned().unwrap_or_default())
        .with_context(|| format!("{}: missing or invalid \"ncalm\" model settings", cfg_path.display()))?;
    config.validate().with_context(|| format!("{}", cfg_path.display()))?;
    let (infos, _) = crate::model::params::param_infos(&config);
    let params = read_safetensors(&dir.join(MODEL_FILE), &infos)?;
    let opt = dir.join(OPTIMIZER_FILE);
    let moments = if opt.exists() {
        let mut names = Vec::new();
        for kind in ["exp_avg", "exp_avg_sq"] {
            names.extend(infos.iter().map(|i| ParamInfo { name: format!("{kind}.{}", i.name), ..i.clone() }));
        }
        let mut all = read_safetensors(&opt, &names)?;
        let v = all.split_off(infos.len());
        Some((all, v))
    } else {
        None
    };
    let state_path = dir.join(TRAINER_FILE);
    let state: TrainerState = serde_json::from_str(
        &std::fs::read_to_string(&state_path)
            .with_context(|| format!("cannot read {}", state_path.display()))?,
    )
    .with_context(|| format!("{} is not a valid trainer state", state_path.display()))?;
    Ok(Checkpoint { config, params, moments, state })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HostParams;

    fn tiny() -> ModelConfig {
        ModelConfig {
            vocab_size: 70,
            layers: 1,
            d_model: 8,
            heads: 2,
            mlp_hidden: 12,
            head_bias: true,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_and_atomic_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let p = HostParams::init(&cfg, 3);
        let zeros: Vec<Vec<f32>> = p.values.iter().map(|v| vec![0.5; v.len()]).collect();
        let state =
            TrainerState { step: 7, tokens: 700, settings: serde_json::json!({"x": 1}), loss_scale: None };
        let ck = Checkpoint {
            config: cfg.clone(),
            params: p.values.clone(),
            moments: Some((zeros.clone(), zeros)),
            state,
        };
        let path = save(dir.path(), &p.infos, &ck).unwrap();
        assert!(path.ends_with("checkpoint-00000007"));
        let back = load(dir.path()).unwrap();
        assert_eq!(back.params, p.values);
        assert_eq!(back.config, cfg);
        assert_eq!(back.state.step, 7);
        assert_eq!(back.moments.unwrap().0[0][0], 0.5);
        save(dir.path(), &p.infos, &ck).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("partial") && !n.contains(".old")), "{names:?}");
    }

    #[test]
    fn wrong_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny();
        let p = HostParams::init(&cfg, 3);
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, to_safetensors(&p.infos[1..], &p.values[1..]).unwrap()).unwrap();
        let err = read_safetensors(&path, &p.infos).unwrap_err().to_string();
        assert!(err.contains("model.embed_tokens.weight") && err.contains("missing"), "{err}");
        let mut infos = p.infos.clone();
        infos[0].shape = vec![71, 8];
        std::fs::write(&path, to_safetensors(&p.infos, &p.values).unwrap()).unwrap();
        let err = read_safetensors(&path, &infos).unwrap_err().to_string();
        assert!(err.contains("[70, 8]") && err.contains("[71, 8]"), "{err}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(read_safetensors(&path, &p.infos)
            .unwrap_err()
            .to_string()
            .contains("not a valid safetensors"));
    }
}
