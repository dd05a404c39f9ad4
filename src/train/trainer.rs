//! The training loop: micro-batches recorded as GPU work with no host round-trips, the optimiser step
//! with clipping on the GPU, scalars read back only at logging points, evaluation, checkpoints, exact
//! resume, and a guard that stops on the first non-finite loss.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, Checkpoint, TrainerState};
use super::data::{Dyck, FileStream, HostStream, NcaStream, SequenceSource};
use crate::config::{MicroBatchReduction, Preset, TrainConfig};
use crate::gpu::{Gpu, GpuTensor, Recorder};
use crate::model::config::nca_vocab;
use crate::model::gpu::GpuModel;
use crate::model::transfer::{stage2_params, Stage2Init};
use crate::model::HostParams;
use crate::ops::adamw::AdamParams;
use crate::plot::{render_grid, Chart};
use crate::rng::derive_key;
use crate::util::write_atomic;

/// Which training stage: its settings come from `[train]` (stage 1) or `[text]` (stage 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Pre-pre-training (NCA, or a baseline: Dyck, another corpus).
    Pre,
    /// Language pre-training.
    Text,
}

/// Where the training sequences come from.
pub enum StageData {
    /// NCA simulated on the GPU every micro-batch (`[data]` of the preset).
    Nca,
    /// `ncalm generate` output.
    NcaFiles(PathBuf),
    /// Dyck-k bracket sequences.
    Dyck(Dyck),
    /// A tokenized corpus: training and validation tokens and their vocabulary.
    Text { label: String, train: Vec<u16>, val: Vec<u16>, vocab: u32 },
}

impl StageData {
    fn describe(&self) -> String {
        match self {
            StageData::Nca => "nca".into(),
            StageData::NcaFiles(d) => d.display().to_string(),
            StageData::Dyck(d) => format!("dyck-{}-{}-{}", d.kinds, d.max_depth, d.p_open),
            StageData::Text { label, .. } => label.clone(),
        }
    }
}

/// How the parameters start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Start {
    /// Fresh initialisation (stage 1).
    Fresh,
    /// Stage 2: new embedding and head; blocks from a stage-1 checkpoint, or fresh (the scratch arm).
    Stage2 { from: Option<PathBuf>, init: Stage2Init },
}

/// What to train and where.
pub struct TrainOptions {
    pub preset: Preset,
    pub stage: Stage,
    pub data: StageData,
    pub start: Start,
    pub run_dir: PathBuf,
    /// Stop after this many optimiser steps (at most `total_steps`, the schedule's length).
    pub stop_step: Option<u64>,
    /// Continue the run in `run_dir` from its latest checkpoint.
    pub resume: bool,
    /// Peak FLOP/s of the device, for the MFU estimate.
    pub peak_flops: Option<f64>,
    /// Set (e.g. by a Ctrl-C handler) to end the run after the current step with a checkpoint.
    pub stop_signal: Option<Arc<AtomicBool>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub mfu: Option<f64>,
    /// Half precision: the loss scale after this step, and the steps skipped so far because their
    /// gradients overflowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: u64,
    /// Training tokens seen when the evaluation ran.
    pub tokens: u64,
    pub val_loss: f64,
    pub val_perplexity: f64,
    /// NCA data: share of next-frame cells predicted exactly by the greedy (argmax) token.
    pub val_cell_accuracy: Option<f64>,
    /// NCA data: mean validation loss of the targets in frame 2, 3, ... (1-based; frame 1's targets
    /// are masked).
    pub val_frame_loss: Vec<f64>,
    /// Entropy (nats) of the validation targets' token frequencies: the loss of a model that learned
    /// only frequencies.
    pub val_unigram_entropy: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: u64,
    /// The run stopped early on request (its last checkpoint is at `steps`).
    pub interrupted: bool,
    pub tokens: u64,
    pub final_loss: f64,
    pub eval: Option<EvalLog>,
    /// Every evaluation of this invocation, in order.
    pub evals: Vec<EvalLog>,
    pub checkpoint: PathBuf,
    /// Training FLOPs per token of the model as trained (its vocabulary resolved).
    pub flops_per_token: f64,
}

/// Known FP32 (non-tensor-core) peaks, for MFU when the user gives none.
pub fn known_peak_flops(adapter: &str) -> Option<f64> {
    let name = adapter.to_lowercase();
    let table: &[(&str, f64)] = &[
        ("h200", 67e12),
        ("h100 pcie", 51e12),
        ("h100", 67e12),
        ("a100", 19.5e12),
        ("l40s", 91.6e12),
        ("l4", 30.3e12),
        ("a10", 31.2e12),
        ("rtx 4090", 82.6e12),
        ("rtx 3090", 35.6e12),
    ];
    table.iter().find(|(k, _)| name.contains(k)).map(|(_, v)| *v)
}

fn first_difference(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Option<String> {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let null = serde_json::Value::Null;
                first_difference(
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    &format!("{path}{}{k}", if path.is_empty() { "" } else { "." }),
                )
            })
        }
        _ if a != b => Some(format!("{path}: the run has {a}, this command {b}")),
        _ => None,
    }
}

pub(super) struct Run {
    pub(super) model: GpuModel,
    data: SequenceSource,
    staging: GpuTensor,
    predictions: GpuTensor,
    loss_history: GpuTensor,
    norm_history: GpuTensor,
    /// Half precision: per step, whether the optimiser skipped it (1) for overflowed gradients.
    skip_history: GpuTensor,
    train: TrainConfig,
    frozen: Vec<usize>,
    seq_len: u32,
    /// Host time spent recording steps (not submitting them), for the profile.
    pub(super) recording: std::time::Duration,
}

impl Run {
    pub(super) fn new(
        gpu: &Gpu,
        model: GpuModel,
        data: SequenceSource,
        train: &TrainConfig,
        frozen: Vec<usize>,
        seq_len: u32,
    ) -> Result<Self> {
        let stride = data.layout().stride;
        Ok(Self {
            staging: gpu.tensor((train.batch * stride) as usize, "staging sequences")?,
            predictions: gpu.tensor((train.batch * seq_len) as usize, "predictions")?,
            loss_history: gpu
                .tensor((train.log_every * u64::from(train.grad_accum)) as usize, "loss history")?,
            norm_history: gpu.tensor(train.log_every as usize, "norm history")?,
            skip_history: gpu.tensor(train.log_every as usize, "skip history")?,
            model,
            data,
            train: train.clone(),
            frozen,
            seq_len,
            recording: std::time::Duration::ZERO,
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

    /// Records and submits one optimiser step (all its micro-batches).
    pub(super) fn step(&mut self, gpu: &Gpu, step: u64) -> Result<()> {
        let t = &self.train;
        let (batch, accum) = (t.batch, t.grad_accum);
        let slot = (step % t.log_every) as usize;
        let scale = self.loss_scale();
        let mut recording = Instant::now();
        let mut rec = Recorder::new(gpu, &self.model.cache);
        self.model.zero_grads(&mut rec);
        for micro in 0..accum {
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
            rec.copy(
                self.model.loss_sum(),
                &self.loss_history.slice(slot * accum as usize + micro as usize, 1),
            );
            // Each micro-batch is its own submission: host-written inputs land before their work.
            self.recording += recording.elapsed();
            rec.submit();
            recording = Instant::now();
            rec = Recorder::new(gpu, &self.model.cache);
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

    /// Loss, gradient norm and whether the step was skipped (half precision, overflow), for the steps
    /// `from..to` (all inside one logging window).
    fn read_history(&self, gpu: &Gpu, from: u64, to: u64) -> Result<Vec<(u64, f64, f64, bool)>> {
        let t = &self.train;
        let losses: Vec<f32> = gpu.read(&self.loss_history)?;
        let norms: Vec<f32> = gpu.read(&self.norm_history)?;
        let skipped: Vec<u32> = gpu.read(&self.skip_history)?;
        let accum = t.grad_accum as usize;
        let scale = f64::from(self.loss_scale());
        Ok((from..to)
            .map(|s| {
                let slot = (s % t.log_every) as usize;
                let micro: f64 =
                    losses[slot * accum..(slot + 1) * accum].iter().map(|&l| f64::from(l) * scale).sum();
                // Reported as the mean loss per counted target, whatever the accumulation mode.
                let loss = match t.accumulate {
                    MicroBatchReduction::Sum => micro / accum as f64,
                    MicroBatchReduction::Mean => micro,
                };
                (s, loss, f64::from(norms[slot]).sqrt(), skipped[slot] != 0)
            })
            .collect())
    }

    fn evaluate(&self, gpu: &Gpu, step: u64, tokens_seen: u64) -> Result<EvalLog> {
        let layout = self.data.layout();
        let val = self.data.validation();
        let (batch, seq_len) = (self.train.batch as usize, self.seq_len as usize);
        let stride = layout.stride as usize;
        let patches = layout.states.pow(4);
        let (mut loss_sum, mut count) = (0.0f64, 0u64);
        let (mut correct, mut cells) = (0u64, 0u64);
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
                    if target < patches {
                        cells += 4;
                        let p = preds[i];
                        if p < patches {
                            let n = layout.states;
                            correct +=
                                (0..4).filter(|k| p / n.pow(*k) % n == target / n.pow(*k) % n).count() as u64;
                        }
                    }
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
        let mut freq = std::collections::HashMap::<u32, u64>::new();
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
            val_cell_accuracy: has_frames.then(|| correct as f64 / cells.max(1) as f64),
            val_frame_loss,
            val_unigram_entropy,
        })
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

    fn checkpoint(
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

/// A log line above the progress bar, or on standard error when there is no bar (not a terminal).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(value)?).with_context(|| format!("writing {}", path.display()))
}

/// Keeps only the metric lines of steps up to `step` (a resumed run continues the file from there).
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

fn write_curves(run_dir: &Path, losses: &[(f64, f64)], eval: Option<&EvalLog>) -> Result<()> {
    let train = Chart::line("training loss", "step", "loss (nats)").with_series("train", losses.to_vec());
    let frames = Chart::line(
        eval.map_or("validation loss per frame".to_string(), |e| {
            format!("validation loss per frame (step {})", e.step)
        }),
        "frame index",
        "loss (nats)",
    )
    .with_series(
        "val",
        eval.map(|e| e.val_frame_loss.iter().enumerate().map(|(i, &l)| ((i + 2) as f64, l)).collect())
            .unwrap_or_default(),
    );
    render_grid(&[train, frames], 2, 800, 500).save_png(&run_dir.join("curves.png"))
}

/// A run's settings with every number as its typed value, so stored and new settings compare exactly.
fn normalise_settings(stored: &serde_json::Value) -> Result<serde_json::Value> {
    let extra = stored
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !Preset::SECTIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()));
    let mut typed = serde_json::to_value(Preset::from_settings(stored)?)?;
    typed.as_object_mut().expect("a preset serialises to an object").extend(extra);
    Ok(typed)
}

/// Trains one stage. `log` receives every human-readable line.
pub fn train(gpu: &Gpu, opts: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    let mut preset = opts.preset.clone();
    let run_dir = &opts.run_dir;
    let resumed = if opts.resume {
        Some(checkpoint::load(run_dir).with_context(|| format!("cannot resume {}", run_dir.display()))?)
    } else {
        None
    };
    if !opts.resume && run_dir.join(checkpoint::LATEST_FILE).exists() {
        bail!("{} already holds a run; continue it with --resume or choose another --out", run_dir.display());
    }
    let t = match opts.stage {
        Stage::Pre => preset.train.clone(),
        Stage::Text => preset.text.clone(),
    };
    let seq_len = preset.model.context;
    let val_sequences = ((t.eval_sequences.max(t.batch)).div_ceil(t.batch) * t.batch) as usize;
    // Every source but the simulated NCA stream opens cheaply. That one searches its rules first, so it
    // opens only after the model has been sized against the device.
    let early = match &opts.data {
        StageData::Nca => None,
        StageData::NcaFiles(dir) => {
            Some(SequenceSource::Files(FileStream::open(dir, seq_len, t.seed, val_sequences)?))
        }
        StageData::Dyck(d) => {
            Some(SequenceSource::Host(HostStream::dyck(*d, seq_len, t.seed, val_sequences)))
        }
        StageData::Text { label, train, val, vocab } => Some(SequenceSource::Host(HostStream::text(
            label,
            train.clone(),
            val,
            *vocab,
            seq_len,
            t.seed,
            val_sequences,
        )?)),
    };
    let (data_vocab, data_states) = match &early {
        Some(d) => (d.layout().vocab, d.layout().states),
        None => {
            let spec = &preset.data.spec;
            spec.validate()?;
            (crate::nca::TokenLayout::new(spec, seq_len)?.vocab_size(), spec.states)
        }
    };
    if preset.model.vocab_size == 0 {
        // Padded to a multiple of 64, as the NCA stage's n^4 + 2 is (and nanoGPT pads GPT-2's 50257).
        preset.model.vocab_size = if data_states > 0 {
            nca_vocab(data_states).max(data_vocab)
        } else {
            data_vocab.next_multiple_of(64)
        };
    }
    if matches!(opts.start, Start::Stage2 { .. }) {
        preset.model.head_bias = false;
    }
    ensure!(
        preset.model.vocab_size >= data_vocab,
        "model.vocab_size {} is smaller than the data's vocabulary {data_vocab}",
        preset.model.vocab_size,
    );
    preset.model.validate()?;
    let section = match opts.stage {
        Stage::Pre => "train",
        Stage::Text => "text",
    };
    let stop = opts.stop_step.unwrap_or(t.total_steps);
    ensure!(
        stop >= 1 && stop <= t.total_steps,
        "--steps must be in 1..={} ({section}.total_steps, the schedule's length), got {stop}",
        t.total_steps
    );
    let mut settings = serde_json::to_value(&preset)?;
    settings["stage"] = serde_json::to_value(opts.stage)?;
    settings["data_source"] = serde_json::Value::String(opts.data.describe());
    settings["start"] = serde_json::to_value(&opts.start)?;
    let settings = normalise_settings(&settings)?;

    let (host, start_step, start_tokens) = match &resumed {
        Some(ck) => {
            if let Some(diff) = first_difference(&normalise_settings(&ck.state.settings)?, &settings, "") {
                bail!("--resume: the settings disagree with the run being resumed ({diff})");
            }
            let mut host = HostParams::init(&ck.config, t.seed);
            host.values = ck.params.clone();
            (host, ck.state.step, ck.state.tokens)
        }
        None => match &opts.start {
            Start::Fresh => (HostParams::init(&preset.model, t.seed), 0, 0),
            Start::Stage2 { from, init } => {
                let stage1 = match from {
                    Some(path) => Some(
                        checkpoint::load(path)
                            .with_context(|| format!("loading the stage-1 checkpoint {}", path.display()))?,
                    ),
                    None => None,
                };
                if let Some(ck) = &stage1 {
                    ensure!(
                        ck.config.arch == preset.model.arch,
                        "the stage-1 checkpoint's architecture is {} but the preset's is {}: use a preset of \
                         the checkpoint's architecture (e.g. {})",
                        ck.config.arch.name(),
                        preset.model.arch.name(),
                        if ck.config.arch == crate::model::config::Arch::Nca { "nca-small" } else { "small" }
                    );
                }
                let blocks = stage1
                    .as_ref()
                    .map(|ck| (crate::model::params::param_infos(&ck.config).0, ck.params.as_slice()));
                let host = stage2_params(
                    &preset.model,
                    t.seed,
                    init,
                    blocks.as_ref().map(|(i, v)| (i.as_slice(), *v)),
                )?;
                (host, 0, 0)
            }
        },
    };
    let frozen = match &opts.start {
        Start::Stage2 { init, .. } => crate::model::transfer::frozen(&host.infos, init),
        Start::Fresh => Vec::new(),
    };
    ensure!(start_step < stop, "the run is already at step {start_step}; ask for more --steps");
    std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create {}", run_dir.display()))?;
    let mut model = GpuModel::new(gpu, &preset.model, &host, t.batch, seq_len)?;
    model.set_precision(t.precision, t.loss_scale)?;
    let data = match early {
        Some(d) => d,
        None => SequenceSource::Nca(Box::new(NcaStream::new(
            gpu,
            &preset.data,
            seq_len,
            t.seed,
            val_sequences,
            log,
        )?)),
    };
    if let Some(ck) = &resumed {
        model.load(&ck.params, ck.moments.as_ref())?;
        if let (Some(scale), Some(saved)) = (model.loss_scale(), &ck.state.loss_scale) {
            scale.restore(gpu, saved)?;
        }
    }
    let mut run = Run::new(gpu, model, data, &t, frozen, seq_len)?;

    let metrics = run_dir.join("metrics.jsonl");
    if resumed.is_some() {
        truncate_metrics(&metrics, start_step)?;
    } else {
        let _ = std::fs::remove_file(&metrics);
    }
    let tokens_per_step = u64::from(t.batch) * u64::from(t.grad_accum) * u64::from(seq_len);
    let flops_per_token = preset.model.flops_per_token(seq_len);
    let peak = opts.peak_flops.or_else(|| gpu.adapter_info.as_ref().and_then(|i| known_peak_flops(&i.name)));
    log(&format!(
        "model: {}, vocab {}; data: {}",
        preset.model.describe(),
        preset.model.vocab_size,
        run.data.describe()
    ));
    log(&format!(
        "training steps {start_step}..{stop} of a {}-step schedule, {tokens_per_step} tokens per step, on {}",
        t.total_steps,
        gpu.describe()
    ));
    if t.precision == crate::ops::matmul::Precision::F16 {
        log(&format!(
            "precision f16: f16 products, f32 weights and optimiser, loss scale from {}",
            t.loss_scale
        ));
    }

    let bar = indicatif::ProgressBar::new(stop - start_step);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
            .expect("valid template"),
    );
    let mut tokens = start_tokens;
    let mut curve: Vec<(f64, f64)> = Vec::new();
    let mut last_eval: Option<EvalLog> = None;
    let mut evals = Vec::new();
    let mut interrupted_at = None;
    let mut window_start = start_step;
    let mut window_time = Instant::now();
    let mut last_loss = f64::NAN;
    let mut last_checkpoint = run_dir.join("(none)");
    for step in start_step..stop {
        run.step(gpu, step)?;
        tokens += tokens_per_step;
        let done = step + 1;
        let interrupted = opts.stop_signal.as_ref().is_some_and(|s| s.load(Ordering::Relaxed));
        let eval_now = done % t.eval_every == 0 || done == stop;
        let checkpoint_now = done % t.checkpoint_every == 0 || done == stop || interrupted;
        if done % t.log_every == 0 || eval_now || checkpoint_now || done - window_start >= t.log_every {
            // Reading the history waits for the GPU: the only synchronisation of the loop.
            let history = run.read_history(gpu, window_start, done)?;
            let secs = window_time.elapsed().as_secs_f64();
            let steps = (done - window_start) as f64;
            // A skipped step's gradients overflowed f16: the loss scale backs off, nothing diverged.
            if let Some(&(bad, loss, norm, _)) =
                history.iter().find(|(_, l, n, skipped)| !l.is_finite() || (!n.is_finite() && !skipped))
            {
                let culprit = run
                    .first_non_finite()?
                    .unwrap_or_else(|| "the loss itself (every tensor is finite)".into());
                bar.abandon();
                bail!(
                    "training diverged at step {}: loss {loss}, gradient norm {norm}; first non-finite tensor: {culprit}. \
                     The last good checkpoint ({}) is intact.",
                    bad + 1,
                    last_checkpoint.display()
                );
            }
            let scale = run.model.loss_scale().map(|s| s.read(gpu)).transpose()?;
            if let Some(state) = scale.filter(|s| s.last_skipped && s.scale <= 1.0) {
                bar.abandon();
                bail!(
                    "training diverged at step {done}: the gradients overflow f16 even at loss scale {} ({} steps \
                     skipped); train with precision = \"f32\". The last good checkpoint ({}) is intact.",
                    state.scale,
                    state.skipped,
                    last_checkpoint.display()
                );
            }
            let &(_, loss, _, _) = history.last().expect("a non-empty window");
            // The norm of the window's last step that was taken (null in the log if none was).
            let grad_norm = history.iter().rev().find(|h| !h.3).map_or(f64::NAN, |h| h.2);
            last_loss = loss;
            let tokens_per_s = steps * tokens_per_step as f64 / secs;
            let entry = StepLog {
                step: done,
                tokens,
                loss,
                grad_norm,
                lr: f64::from(t.lr_at(step)),
                ms_per_step: secs * 1e3 / steps,
                tokens_per_s,
                mfu: peak.map(|p| flops_per_token * tokens_per_s / p),
                loss_scale: scale.map(|s| f64::from(s.scale)),
                skipped_steps: scale.map(|s| u64::from(s.skipped)),
            };
            for &(s, l, _, _) in &history {
                curve.push(((s + 1) as f64, l));
            }
            append_jsonl(&metrics, &entry)?;
            let mfu = entry.mfu.map_or("n/a".to_string(), |m| format!("{:.1}%", 100.0 * m));
            let scaling = scale.map_or(String::new(), |s| {
                let scale = if s.scale < 1e7 { format!("{}", s.scale) } else { format!("{:.2e}", s.scale) };
                format!(" | loss scale {scale} ({} steps skipped)", s.skipped)
            });
            say(&bar, format!(
                "step {done:>6} | loss {loss:.4} | grad norm {grad_norm:.3} | lr {:.2e} | {:.1} ms | {:.0} tok/s | MFU {mfu}{scaling}",
                entry.lr, entry.ms_per_step, tokens_per_s
            ));
            bar.set_message(format!("loss {loss:.4}"));
            window_start = done;
            window_time = Instant::now();
        }
        if eval_now {
            let e = run.evaluate(gpu, done, tokens)?;
            append_jsonl(&metrics, &e)?;
            let frames = &e.val_frame_loss;
            let detail = match e.val_cell_accuracy {
                Some(acc) => format!(
                    " | cell accuracy {:.2}% | frame loss {:.3} (frame 2) .. {:.3} (frame {})",
                    100.0 * acc,
                    frames.first().copied().unwrap_or(f64::NAN),
                    frames.last().copied().unwrap_or(f64::NAN),
                    frames.len() + 1
                ),
                None => format!(" | val perplexity {:.3}", e.val_perplexity),
            };
            say(&bar, format!("eval {done:>6} | val loss {:.4}{detail}", e.val_loss));
            evals.push(e.clone());
            last_eval = Some(e);
            write_curves(run_dir, &curve, last_eval.as_ref())?;
            window_time = Instant::now();
        }
        if checkpoint_now {
            last_checkpoint = run.checkpoint(run_dir, done, tokens, &settings)?;
            say(&bar, format!("saved {}", last_checkpoint.display()));
            window_time = Instant::now();
        }
        bar.inc(1);
        if interrupted && done < stop {
            say(&bar, format!("interrupted at step {done}; continue with --resume {}", run_dir.display()));
            interrupted_at = Some(done);
            break;
        }
    }
    bar.finish_and_clear();
    let summary = TrainSummary {
        steps: interrupted_at.unwrap_or(stop),
        interrupted: interrupted_at.is_some(),
        tokens,
        final_loss: last_loss,
        eval: last_eval,
        evals,
        checkpoint: last_checkpoint,
        flops_per_token,
    };
    write_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_differences_are_named() {
        let a = serde_json::json!({"train": {"lr": 0.001, "batch": 4}, "model": {"layers": 2}});
        let b = serde_json::json!({"train": {"lr": 0.0005, "batch": 4}, "model": {"layers": 2}});
        assert_eq!(first_difference(&a, &a, ""), None);
        let d = first_difference(&a, &b, "").unwrap();
        assert!(d.starts_with("train.lr") && d.contains("0.001") && d.contains("0.0005"), "{d}");
    }

    #[test]
    fn peaks_are_known_for_common_gpus() {
        assert_eq!(known_peak_flops("NVIDIA H100 80GB HBM3"), Some(67e12));
        assert_eq!(known_peak_flops("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }
}
