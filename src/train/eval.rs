//! Loss and perplexity of a checkpoint on a flat token file: the numbers `ncalm eval` prints and the
//! Hugging Face cross-check compares against.

use std::path::Path;

use anyhow::{bail, ensure, Result};
use serde::Serialize;

use super::checkpoint;
use crate::data::Tokens;
use crate::gpu::{Gpu, Recorder};
use crate::model::gpu::GpuModel;
use crate::model::HostParams;

#[derive(Clone, Debug, Serialize)]
pub struct TokenEval {
    pub sequences: usize,
    pub targets: u64,
    pub loss: f64,
    pub perplexity: f64,
}

/// Maps a flat little-endian uint16 token file (the nanoGPT layout).
pub fn read_u16_tokens(path: &Path) -> Result<Tokens> {
    Tokens::open(path)
}

/// Mean next-token loss over consecutive, non-overlapping blocks of `seq_len + 1` tokens (input
/// `block[..L]`, targets `block[1..]`, every target counted), up to `max_sequences` blocks.
pub fn evaluate_tokens(
    gpu: &Gpu,
    ckpt_path: &Path,
    tokens: &[u16],
    seq_len: u32,
    batch: u32,
    max_sequences: usize,
) -> Result<TokenEval> {
    let ck = checkpoint::load(ckpt_path)?;
    let cfg = ck.config.clone();
    ensure!(
        seq_len >= 1 && seq_len <= cfg.context,
        "--seq-len must be in 1..={} (the model's context)",
        cfg.context
    );
    let stride = seq_len as usize + 1;
    let sequences = (tokens.len() / stride).min(max_sequences);
    ensure!(sequences > 0, "the token file holds {} tokens, fewer than one block of {stride}", tokens.len());
    if let Some(at) = tokens.iter().position(|&t| u32::from(t) >= cfg.vocab_size) {
        bail!(
            "token {} at position {at} is not below the model's vocabulary size {}",
            tokens[at],
            cfg.vocab_size
        );
    }
    let batch = batch.min(sequences as u32).max(1);
    let host = HostParams::from_checkpoint(&cfg, ck.params)?;
    let model = GpuModel::new(gpu, &cfg, &host, batch, seq_len)?;
    let (mut loss, mut targets) = (0.0f64, 0u64);
    let mut done = 0;
    while done < sequences {
        let take = (sequences - done).min(batch as usize);
        let mut ids = vec![0u32; (batch * seq_len) as usize];
        let mut tgt = vec![crate::ops::cross_entropy::IGNORE; ids.len()];
        for s in 0..take {
            let block = &tokens[(done + s) * stride..(done + s + 1) * stride];
            for t in 0..seq_len as usize {
                ids[s * seq_len as usize + t] = u32::from(block[t]);
                tgt[s * seq_len as usize + t] = u32::from(block[t + 1]);
            }
        }
        model.set_batch(&ids, &tgt)?;
        let mut rec = Recorder::new(gpu, &model.cache);
        model.forward(&mut rec, 1.0, None, None)?;
        rec.submit();
        let losses: Vec<f32> = gpu.read(model.losses())?;
        loss += losses[..take * seq_len as usize].iter().map(|&l| f64::from(l)).sum::<f64>();
        targets += (take * seq_len as usize) as u64;
        done += take;
    }
    let mean = loss / targets as f64;
    Ok(TokenEval { sequences, targets, loss: mean, perplexity: mean.exp() })
}
