//! One run's state on the GPU and what it does each step: micro-batches recorded as GPU work with no
//! host round-trips, the optimiser step with clipping on the GPU, the per-step history read back only
//! at logging points, the divergence guard, and checkpoints.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::allreduce::{GradientSync, BUCKET_BYTES};
use super::checkpoint::{self, Checkpoint, TrainerState};
use super::data::SequenceSource;
use crate::config::{MicroBatchReduction, TrainConfig};
use crate::distributed::ProcessGroup;
use crate::gpu::{Gpu, GpuTensor, Recorder};
use crate::model::gpu::GpuModel;
use crate::ops::adamw::AdamParams;
use crate::ops::loss_scale::ScaleState;
use crate::rng::derive_key;

/// One optimiser step as read back at a logging point.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepRecord {
    /// The step's index (0-based: the step that makes `step + 1` steps done).
    pub step: u64,
    /// Mean loss per counted target.
    pub loss: f64,
    pub grad_norm: f64,
    /// Half precision: the optimiser skipped the step because its gradients overflowed.
    pub skipped: bool,
}

/// A run on the GPU: the model, its data source, and the buffers each step leaves its loss, gradient
/// norm and skip flag in until the next logging point reads them. With several ranks, each runs its
/// own share of every step's micro-batches and the gradients are summed before the optimiser step.
pub(super) struct Run {
    pub(super) model: GpuModel,
    pub(super) data: SequenceSource,
    pub(super) staging: GpuTensor,
    pub(super) predictions: GpuTensor,
    loss_history: GpuTensor,
    norm_history: GpuTensor,
    /// Half precision: per step, whether the optimiser skipped it (1) for overflowed gradients.
    skip_history: GpuTensor,
    pub(super) train: TrainConfig,
    frozen: Vec<usize>,
    pub(super) seq_len: u32,
    /// Host time spent recording steps (not submitting them), for the profile.
    pub(super) recording: Duration,
    pub(super) group: ProcessGroup,
    /// The micro-batches of a step this rank runs: `grad_accum` over the number of ranks.
    local_accum: u32,
    /// Several ranks: the gradient all-reduce.
    pub(super) sync: Option<GradientSync>,
}

impl Run {
    pub(super) fn new(
        gpu: &Gpu,
        model: GpuModel,
        data: SequenceSource,
        train: &TrainConfig,
        frozen: Vec<usize>,
        seq_len: u32,
        group: &ProcessGroup,
    ) -> Result<Self> {
        let stride = data.layout().stride;
        let local_accum = local_accumulation(train.grad_accum, group.size(), "train")?;
        let sync = group.is_distributed().then(|| GradientSync::new(gpu, &model.grads.chunks, BUCKET_BYTES));
        Ok(Self {
            staging: gpu.tensor((train.batch * stride) as usize, "staging sequences")?,
            predictions: gpu.tensor((train.batch * seq_len) as usize, "predictions")?,
            loss_history: gpu.tensor((train.log_every * u64::from(local_accum)) as usize, "loss history")?,
            norm_history: gpu.tensor(train.log_every as usize, "norm history")?,
            skip_history: gpu.tensor(train.log_every as usize, "skip history")?,
            model,
            data,
            train: train.clone(),
            frozen,
            seq_len,
            recording: Duration::ZERO,
            group: group.clone(),
            local_accum,
            sync,
        })
    }

    fn counted_per_micro(&self) -> u64 {
        let masked = self.data.layout().masked.min(self.seq_len);
        u64::from(self.train.batch) * u64::from(self.seq_len - masked)
    }

    fn loss_scale(&self) -> f32 {
        let c = self.counted_per_micro() as f64;
        let accum = f64::from(self.train.grad_accum);
        match self.train.accumulate {
            MicroBatchReduction::Sum => (1.0 / c) as f32,
            MicroBatchReduction::Mean => (1.0 / (c * accum)) as f32,
        }
    }

    /// Records and submits one optimiser step (this rank's micro-batches of it, and with several
    /// ranks the gradient all-reduce, which waits for them).
    pub(super) fn step(&mut self, gpu: &Gpu, step: u64) -> Result<()> {
        let t = &self.train;
        let (batch, accum, local) = (t.batch, t.grad_accum, self.local_accum);
        let slot = (step % t.log_every) as usize;
        let scale = self.loss_scale();
        let mut recording = Instant::now();
        let mut rec = Recorder::new(gpu, &self.model.cache);
        self.model.zero_grads(&mut rec);
        // Rank r runs the step's micro-batches r * local .. (r + 1) * local: together the ranks see
        // the sequences, and draw the dropout masks, of one process running all of them.
        for j in 0..local {
            let micro = self.group.rank() as u32 * local + j;
            let first = (step * u64::from(accum) + u64::from(micro)) * u64::from(batch);
            self.data.fill(
                &mut rec,
                &self.staging,
                &self.model.ids,
                &self.model.targets,
                first,
                batch,
                self.seq_len,
            )?;
            let key = derive_key(t.seed, &[0xd509, step, u64::from(micro)]);
            self.model.forward(&mut rec, scale, Some(key), None)?;
            self.model.backward(&mut rec, Some(key))?;
            rec.copy(self.model.loss_sum(), &self.loss_history.slice(slot * local as usize + j as usize, 1));
            // Each micro-batch is its own submission: host-written inputs land before their work.
            self.recording += recording.elapsed();
            rec.submit();
            recording = Instant::now();
            rec = Recorder::new(gpu, &self.model.cache);
        }
        if let Some(sync) = &mut self.sync {
            sync.all_reduce(gpu, &self.model.grads.chunks, &self.group)?;
        }
        let adam = AdamParams {
            lr: t.lr_at(step),
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
            decoupled: t.decoupled,
            max_norm: t.clip,
            grad_scale: 1.0,
            step: step + 1,
        };
        self.model.optimizer_step(&mut rec, &adam, t.decay_2d_only, &self.frozen)?;
        rec.copy(self.model.norm_sq(), &self.norm_history.slice(slot, 1));
        if let Some(scale) = self.model.loss_scale() {
            rec.copy(&scale.last_skipped(), &self.skip_history.slice(slot, 1));
        }
        self.recording += recording.elapsed();
        rec.submit();
        Ok(())
    }

    /// The steps `from..to` (all inside one logging window). Waits for the GPU; with several ranks,
    /// every rank must call it at the same point, and all of them get the same history.
    pub(super) fn read_history(&self, gpu: &Gpu, from: u64, to: u64) -> Result<Vec<StepRecord>> {
        let t = &self.train;
        let losses: Vec<f32> = gpu.read(&self.loss_history)?;
        let norms: Vec<f32> = gpu.read(&self.norm_history)?;
        let skipped: Vec<u32> = gpu.read(&self.skip_history)?;
        let local = self.local_accum as usize;
        let scale = f64::from(self.loss_scale());
        // Each step's scaled micro-batch losses, summed over this rank's micro-batches, then the ranks.
        let mut sums: Vec<f64> = (from..to)
            .map(|s| {
                let slot = (s % t.log_every) as usize;
                losses[slot * local..(slot + 1) * local].iter().map(|&l| f64::from(l) * scale).sum()
            })
            .collect();
        self.group.sum_f64(&mut sums);
        Ok((from..to)
            .zip(sums)
            .map(|(s, micro)| {
                let slot = (s % t.log_every) as usize;
                // Reported as the mean loss per counted target, whatever the accumulation mode.
                let loss = match t.accumulate {
                    MicroBatchReduction::Sum => micro / f64::from(t.grad_accum),
                    MicroBatchReduction::Mean => micro,
                };
                StepRecord {
                    step: s,
                    loss,
                    grad_norm: f64::from(norms[slot]).sqrt(),
                    skipped: skipped[slot] != 0,
                }
            })
            .collect())
    }

    /// Half precision: the dynamic loss scale's state (waits for the GPU).
    pub(super) fn read_loss_scale(&self, gpu: &Gpu) -> Result<Option<ScaleState>> {
        self.model.loss_scale().map(|s| s.read(gpu)).transpose()
    }

    /// Why training cannot go on after `history` (ending at `done` steps), if it cannot: a non-finite
    /// loss or gradient norm, or gradients that overflow f16 even at the smallest loss scale.
    pub(super) fn divergence(
        &self,
        history: &[StepRecord],
        scale: Option<ScaleState>,
        done: u64,
    ) -> Result<Option<String>> {
        // A skipped step's gradients overflowed f16: the loss scale backs off, nothing diverged.
        if let Some(bad) =
            history.iter().find(|h| !h.loss.is_finite() || (!h.grad_norm.is_finite() && !h.skipped))
        {
            let culprit =
                self.first_non_finite()?.unwrap_or_else(|| "the loss itself (every tensor is finite)".into());
            return Ok(Some(format!(
                "training diverged at step {}: loss {}, gradient norm {}; first non-finite tensor: {culprit}",
                bad.step + 1,
                bad.loss,
                bad.grad_norm
            )));
        }
        if let Some(state) = scale.filter(|s| s.last_skipped && s.scale <= 1.0) {
            return Ok(Some(format!(
                "training diverged at step {done}: the gradients overflow f16 even at loss scale {} ({} steps \
                 skipped); train with precision = \"f32\"",
                state.scale, state.skipped
            )));
        }
        Ok(None)
    }

    /// Names the first tensor holding a non-finite value (gradients first, then parameters).
    fn first_non_finite(&self) -> Result<Option<String>> {
        for (kind, set) in [("gradient", &self.model.grads), ("parameter", &self.model.params)] {
            for (info, t) in self.model.infos.iter().zip(set.iter()) {
                let v: Vec<f32> = self.model.gpu.read(t)?;
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Ok(Some(format!("{kind} of {} (element {i} is {})", info.name, v[i])));
                }
            }
        }
        Ok(None)
    }

    /// Saves parameters, moments and trainer state as `run_dir/checkpoint-STEP`; returns its path.
    pub(super) fn checkpoint(
        &self,
        run_dir: &Path,
        step: u64,
        tokens: u64,
        settings: &serde_json::Value,
    ) -> Result<PathBuf> {
        let (m, v) = self.model.read_moments()?;
        let loss_scale = self.model.loss_scale().map(|s| s.read(&self.model.gpu)).transpose()?;
        let ck = Checkpoint {
            config: self.model.cfg.clone(),
            params: self.model.read_params()?,
            moments: Some((m, v)),
            state: TrainerState { step, tokens, settings: settings.clone(), loss_scale },
        };
        checkpoint::save(run_dir, &self.model.infos, &ck)
    }
}

/// The micro-batches each of `ranks` runs per step: the step's `grad_accum` shared evenly, so that any
/// number of ranks trains on the same global batch.
/// `section` names the settings (`train` or `text`) in the error.
pub(super) fn local_accumulation(grad_accum: u32, ranks: usize, section: &str) -> Result<u32> {
    let ranks = ranks as u32;
    anyhow::ensure!(
        grad_accum.is_multiple_of(ranks),
        "{ranks} ranks cannot share a step's {grad_accum} micro-batches evenly: make {section}.grad_accum \
         (the micro-batches of one step, over all ranks) a multiple of {ranks}, e.g. --set \
         {section}.grad_accum={}",
        grad_accum.next_multiple_of(ranks)
    );
    Ok(grad_accum / ranks)
}
