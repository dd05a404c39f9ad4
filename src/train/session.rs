//! Training driven step by step by the caller: a host application that owns its device (lent to ncalm
//! with [`Gpu::from_device`]) decides when to step, when to read the loss back, when to evaluate and
//! when to save. [`train`](super::trainer::train) runs a whole stage with logging and checkpoints on
//! a schedule; [`Trainer`] is its set-up and its step without the loop around them.

use std::path::PathBuf;

use anyhow::{bail, ensure, Result};

use super::metrics::EvalLog;
use super::run::Run;
use super::setup::prepare;
use super::trainer::{Stage, StageData, Start, TrainOptions};
use crate::config::{Preset, TrainConfig};
use crate::distributed::ProcessGroup;
use crate::gpu::Gpu;
use crate::model::infer::{GpuGenerator, Sampling};

impl TrainOptions {
    /// Options for a new run of `preset` on `data`, written to `run_dir`: fresh parameters, the whole
    /// schedule (`total_steps` of the stage's settings), no resume, one process. The fields are public,
    /// so a caller changes what else it needs (say, `stop_step` or `resume`) on the value returned.
    ///
    /// ```
    /// use ncalm::config::Preset;
    /// use ncalm::data::Dyck;
    /// use ncalm::train::trainer::{Stage, StageData, TrainOptions};
    ///
    /// let mut preset = Preset::load("tiny", &[])?;
    /// preset.train.log_every = 5;
    /// let mut opts = TrainOptions::new(preset, Stage::Pre, StageData::Dyck(Dyck::PAPER), "runs/dyck");
    /// opts.stop_step = Some(20);
    /// assert!(!opts.resume && opts.group.size() == 1);
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn new(preset: Preset, stage: Stage, data: StageData, run_dir: impl Into<PathBuf>) -> Self {
        Self {
            preset,
            stage,
            data,
            start: Start::Fresh,
            run_dir: run_dir.into(),
            stop_step: None,
            resume: false,
            peak_flops: None,
            stop_signal: None,
            group: ProcessGroup::single(),
        }
    }
}

/// One optimiser step's outcome, as read back from the GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// Steps done once this one was (1-based, as `metrics.jsonl` counts them).
    pub step: u64,
    /// Mean training loss per counted target of the step's batch, in nats. Not finite once training
    /// has diverged.
    pub loss: f64,
    /// Norm of the step's gradients before clipping.
    pub grad_norm: f64,
    /// Half precision: the optimiser skipped this step because its gradients overflowed f16.
    pub skipped: bool,
}

/// A training run that its caller drives one step at a time.
///
/// [`step`](Self::step) records and submits a step's GPU work and returns without waiting for it, so
/// a host can interleave training with its own work on the same device. Nothing is read back until
/// the caller asks: [`history`](Self::history) and [`loss`](Self::loss) wait for the submitted steps
/// and return their losses. The GPU keeps the losses of at most `log_every` steps (of the stage's
/// settings); a step that would overwrite unread ones first reads them back itself, which is the
/// only wait `step` ever makes.
///
/// Set-up is the one [`train`](super::trainer::train) uses, so the same options give the same
/// steps, resume (`opts.resume`) works the same way, and [`save`](Self::save) writes the checkpoints
/// both read. A `Trainer` runs in one process (`opts.group` must be [`ProcessGroup::single`]); it
/// ignores `opts.stop_signal` and `opts.peak_flops`, and writes nothing to the run directory but the
/// checkpoints it is asked for.
///
/// # Example
///
/// A host that owns its device trains the `tiny` preset on Dyck sequences and reads the loss every
/// five steps:
///
/// ```no_run
/// use ncalm::config::Preset;
/// use ncalm::data::Dyck;
/// use ncalm::train::trainer::{Stage, StageData, TrainOptions};
/// use ncalm::train::Trainer;
/// use ncalm::{wgpu, Gpu};
///
/// # fn main() -> anyhow::Result<()> {
/// // The host's device, with the adapter's limits and the optional features ncalm uses.
/// let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
/// let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
/// let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
///     required_limits: adapter.limits(),
///     required_features: adapter.features() & ncalm::gpu::OPTIONAL_FEATURES,
///     ..Default::default()
/// }))?;
/// let gpu = Gpu::from_device(device, queue);
///
/// let preset = Preset::load("tiny", &[])?;
/// let opts = TrainOptions::new(preset, Stage::Pre, StageData::Dyck(Dyck::PAPER), "runs/host");
/// let mut trainer = Trainer::new(&gpu, &opts, &mut |line| println!("{line}"))?;
/// for _ in 0..4 {
///     for _ in 0..5 {
///         trainer.step()?; // submitted, not waited for
///     }
///     println!("step {}: loss {:.3}", trainer.steps_done(), trainer.loss()?);
/// }
/// let eval = trainer.evaluate()?;
/// println!("validation loss {:.3}; saved {}", eval.val_loss, trainer.save()?.display());
/// # Ok(())
/// # }
/// ```
pub struct Trainer {
    gpu: Gpu,
    run: Run,
    /// The stage's training settings (`[train]` or `[text]`).
    train: TrainConfig,
    /// The run's settings as its checkpoints store them.
    settings: serde_json::Value,
    run_dir: PathBuf,
    /// Steps done (submitted), and the step the schedule stops at.
    done: u64,
    stop: u64,
    tokens: u64,
    tokens_per_step: u64,
    /// Steps whose losses have been read back from the GPU.
    read_to: u64,
    /// Read back but not yet returned by `history`.
    unreturned: Vec<StepLoss>,
    /// The latest loss read back (NaN before any).
    last_loss: f64,
}

impl Trainer {
    /// Sets up the run `opts` asks for on `gpu` exactly as [`train`](super::trainer::train) does: a new
    /// run (refused where `opts.run_dir` holds one already) or, with `opts.resume`, the latest
    /// checkpoint of `opts.run_dir`; the model's vocabulary from the data; the starting parameters;
    /// the data source; the model on the GPU, sized against the device first. `log` receives the
    /// lines that describe the run.
    pub fn new(gpu: &Gpu, opts: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<Self> {
        ensure!(
            !opts.group.is_distributed(),
            "a Trainer runs in one process: train with several ranks through ncalm::train::trainer::train"
        );
        let prep = prepare(gpu, opts, log)?;
        Ok(Self {
            gpu: gpu.clone(),
            run: prep.run,
            train: prep.train,
            settings: prep.settings,
            run_dir: opts.run_dir.clone(),
            done: prep.start_step,
            stop: prep.stop,
            tokens: prep.start_tokens,
            tokens_per_step: prep.tokens_per_step,
            read_to: prep.start_step,
            unreturned: Vec::new(),
            last_loss: f64::NAN,
        })
    }

    /// Records and submits one optimiser step without waiting for it. Fails once the run has reached
    /// [`stop_step`](Self::stop_step) (the learning-rate schedule ends there).
    pub fn step(&mut self) -> Result<()> {
        if self.done >= self.stop {
            bail!(
                "the run has reached its last step ({}); start another with a longer schedule or a later \
                 stop_step",
                self.stop
            );
        }
        // The step's losses would overwrite the oldest unread ones: read those back first.
        if self.done - self.read_to >= self.train.log_every {
            self.read_back()?;
        }
        self.run.step(&self.gpu, self.done)?;
        self.done += 1;
        self.tokens += self.tokens_per_step;
        Ok(())
    }

    /// Waits for the steps submitted so far and returns the losses of those not returned before, in
    /// order (empty when there are none).
    pub fn history(&mut self) -> Result<Vec<StepLoss>> {
        self.read_back()?;
        Ok(std::mem::take(&mut self.unreturned))
    }

    /// Waits for the steps submitted so far and returns the loss of the latest (NaN before the first
    /// step). The losses of the steps in between are dropped; [`history`](Self::history) returns them.
    pub fn loss(&mut self) -> Result<f64> {
        self.read_back()?;
        self.unreturned.clear();
        Ok(self.last_loss)
    }

    /// Evaluates the model on the run's validation set (waits for the GPU).
    pub fn evaluate(&mut self) -> Result<EvalLog> {
        self.run.evaluate(&self.gpu, self.done, self.tokens)
    }

    /// Writes a checkpoint of the steps done so far as `run_dir/checkpoint-STEP` (atomically, and
    /// `run_dir/latest` names it) and returns its path. It holds the parameters, the optimiser's
    /// moments and the run's settings: [`checkpoint::load`](super::checkpoint::load) reads it, and a
    /// run with `resume` set continues from it.
    pub fn save(&self) -> Result<PathBuf> {
        self.run.checkpoint(&self.run_dir, self.done, self.tokens, &self.settings)
    }

    /// A generator that samples from the model being trained, on the GPU, reading its parameters where
    /// they are (no copy): it sees every step taken before its generation is recorded.
    pub fn generator(&self, sampling: Sampling) -> Result<GpuGenerator> {
        GpuGenerator::from_model(&self.run.model, sampling)
    }

    /// Optimiser steps done, those of a resumed run included.
    pub fn steps_done(&self) -> u64 {
        self.done
    }

    /// Training tokens seen, those of a resumed run included.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens
    }

    /// The step after which [`step`](Self::step) refuses to go on: `opts.stop_step`, or the length of
    /// the schedule.
    pub fn stop_step(&self) -> u64 {
        self.stop
    }

    /// The stage's training settings (`[train]` or `[text]` of the preset).
    pub fn config(&self) -> &TrainConfig {
        &self.train
    }

    /// Reads the losses of the steps submitted since the last read.
    fn read_back(&mut self) -> Result<()> {
        if self.read_to == self.done {
            return Ok(());
        }
        let history = self.run.read_history(&self.gpu, self.read_to, self.done)?;
        self.read_to = self.done;
        self.unreturned.extend(history.iter().map(|h| StepLoss {
            step: h.step + 1,
            loss: h.loss,
            grad_norm: h.grad_norm,
            skipped: h.skipped,
        }));
        if let Some(last) = history.last() {
            self.last_loss = last.loss;
        }
        Ok(())
    }
}
