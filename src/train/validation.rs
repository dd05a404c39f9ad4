//! The evaluation during training: loss and perplexity on the run's validation set, and for NCA data
//! the loss per frame and the share of cells predicted exactly.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};

use super::metrics::EvalLog;
use super::run::Run;
use crate::gpu::{Gpu, Recorder};
use crate::nca::accuracy::CellAccuracy;

impl Run {
    /// Evaluates the validation set's whole micro-batches, `step` steps and `tokens_seen` tokens into
    /// training.
    pub(super) fn evaluate(&self, gpu: &Gpu, step: u64, tokens_seen: u64) -> Result<EvalLog> {
        let layout = self.data.layout();
        let val = self.data.validation();
        let (batch, seq_len) = (self.train.batch as usize, self.seq_len as usize);
        let stride = layout.stride as usize;
        let (mut loss_sum, mut count) = (0.0f64, 0u64);
        let mut cells = CellAccuracy::default();
        let has_frames = layout.frame_len > 0;
        let frames = if has_frames { (seq_len + 1).div_ceil(layout.frame_len as usize) + 1 } else { 1 };
        let mut frame_sum = vec![0.0f64; frames];
        let mut frame_count = vec![0u64; frames];
        for chunk in val.tokens.chunks(batch * stride).filter(|c| c.len() == batch * stride) {
            gpu.write(&self.staging.slice(0, chunk.len()), chunk);
            let mut rec = Recorder::new(gpu, &self.model.cache);
            crate::ops::tokens::prepare(
                &mut rec,
                &self.staging,
                &self.model.ids,
                &self.model.targets,
                batch as u32,
                seq_len as u32,
                layout.stride,
                layout.masked,
            )?;
            self.model.forward(&mut rec, 1.0, None, Some(&self.predictions))?;
            rec.submit();
            let losses: Vec<f32> = gpu.read(self.model.losses())?;
            let preds: Vec<u32> = gpu.read(&self.predictions)?;
            for s in 0..batch {
                for t in layout.masked as usize..seq_len {
                    let target = chunk[s * stride + t + 1];
                    let i = s * seq_len + t;
                    let loss = f64::from(losses[i]);
                    loss_sum += loss;
                    count += 1;
                    if !has_frames {
                        continue;
                    }
                    let frame = (t + 1) / layout.frame_len as usize;
                    frame_sum[frame] += loss;
                    frame_count[frame] += 1;
                    cells.add(layout.states, preds[i], target);
                }
            }
        }
        ensure!(count > 0, "no validation targets: the validation set holds fewer than one micro-batch");
        let val_frame_loss = frame_sum
            .iter()
            .zip(&frame_count)
            .skip(1)
            .filter(|(_, &c)| c > 0)
            .map(|(s, &c)| s / c as f64)
            .collect();
        let val_loss = loss_sum / count as f64;
        // Summed in token order, so that the entropy is the same in every process to the last bit.
        let mut freq = BTreeMap::<u32, u64>::new();
        for chunk in val.tokens.chunks(batch * stride).filter(|c| c.len() == batch * stride) {
            for s in 0..batch {
                for t in layout.masked as usize..seq_len {
                    *freq.entry(chunk[s * stride + t + 1]).or_default() += 1;
                }
            }
        }
        let val_unigram_entropy =
            freq.values().map(|&c| -(c as f64 / count as f64) * (c as f64 / count as f64).ln()).sum();
        Ok(EvalLog {
            step,
            tokens: tokens_seen,
            val_loss,
            val_perplexity: val_loss.exp(),
            val_cell_accuracy: has_frames.then(|| cells.accuracy()),
            val_frame_loss,
            val_unigram_entropy,
        })
    }
}
