//! Training one stage: its options, and the loop. Each step is recorded as GPU work with no host
//! round-trips; the loop reads scalars back only at logging points, evaluates, saves checkpoints, and
//! stops on the first non-finite loss or on request. The set-up (resume, vocabulary, starting
//! parameters) lives in `setup`, a step's GPU work in `run`, the evaluation in `validation` and what is
//! logged in `metrics`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::checkpoint;
use super::metrics::{EvalLog, Progress};
use super::setup::{prepare, Prepared};
use crate::config::Preset;
use crate::data::{Dyck, Tokens};
use crate::distributed::ProcessGroup;
use crate::gpu::Gpu;
use crate::model::stage2_init::Stage2Init;
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
    /// A tokenized corpus: training and validation tokens (mapped files, shared by clones) and their
    /// vocabulary.
    Text { label: String, train: Tokens, val: Tokens, vocab: u32 },
}

impl StageData {
    pub(super) fn describe(&self) -> String {
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
    /// The ranks that train together ([`ProcessGroup::single`] for one process).
    pub group: ProcessGroup,
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
    /// Wall seconds this invocation spent on its evaluations, logging them included.
    #[serde(default)]
    pub eval_seconds: f64,
}

/// Trains one stage. `log` receives every human-readable line (of rank 0, with several ranks).
pub fn train(gpu: &Gpu, opts: &TrainOptions, log: &mut dyn FnMut(&str)) -> Result<TrainSummary> {
    let group = &opts.group;
    let root = group.is_root();
    let mut quiet = |_: &str| {};
    let log: &mut dyn FnMut(&str) = if root { log } else { &mut quiet };
    let prep = group.settle(prepare(gpu, opts, log))?;
    group.settle(check_agreement(group, &prep))?;
    let (mut run, t, settings) = (prep.run, prep.train, prep.settings);
    let (start_step, stop, tokens_per_step) = (prep.start_step, prep.stop, prep.tokens_per_step);
    let run_dir = &opts.run_dir;
    let mut progress = Progress::new(
        run_dir,
        (start_step, stop),
        tokens_per_step,
        prep.flops_per_token,
        prep.peak_flops,
        root,
    );
    let mut tokens = prep.start_tokens;
    let mut evals: Vec<EvalLog> = Vec::new();
    let mut interrupted_at = None;
    let mut last_loss = f64::NAN;
    let mut last_checkpoint = run_dir.join("(none)");
    let mut eval_seconds = 0.0;
    // An error of one rank inside a step returns at once: the command's end aborts the whole job.
    // The points below that every rank reaches at the same step settle their outcome together.
    for step in start_step..stop {
        run.step(gpu, step)?;
        tokens += tokens_per_step;
        let done = step + 1;
        // An interrupt may reach the ranks at different steps; they stop together at the first.
        let interrupted = group.any(opts.stop_signal.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)));
        let eval_now = done % t.eval_every == 0 || done == stop;
        let checkpoint_now = done % t.checkpoint_every == 0 || done == stop || interrupted;
        let window = done - progress.window_start;
        if done % t.log_every == 0 || eval_now || checkpoint_now || window >= t.log_every {
            // Reading the history waits for the GPU: one process's only synchronisation in the loop.
            let history = run.read_history(gpu, progress.window_start, done)?;
            let scale = run.read_loss_scale(gpu)?;
            let all_reduce = run.sync.as_ref().map(|s| s.time);
            let logged = match run.divergence(&history, scale, done)? {
                Some(why) => Err(progress.diverged(&why, &last_checkpoint)),
                None => {
                    progress.log_steps(&history, scale, (done, tokens), f64::from(t.lr_at(step)), all_reduce)
                }
            };
            last_loss = group.settle(logged)?;
        }
        // Rank 0 evaluates and writes the checkpoint while the others wait for its outcome.
        let mut on_root = || -> Result<()> {
            if eval_now {
                let started = Instant::now();
                let e = run.evaluate(gpu, done, tokens)?;
                progress.log_eval(&e)?;
                evals.push(e);
                eval_seconds += started.elapsed().as_secs_f64();
            }
            if checkpoint_now {
                last_checkpoint = run.checkpoint(run_dir, done, tokens, &settings)?;
                progress.log_checkpoint(&last_checkpoint);
            }
            Ok(())
        };
        if eval_now || checkpoint_now {
            let outcome = if root { on_root() } else { Ok(()) };
            group.settle(outcome)?;
            if checkpoint_now {
                last_checkpoint = checkpoint::path_of(run_dir, done);
            }
        }
        progress.step_done();
        if interrupted && done < stop {
            progress.say(format!("interrupted at step {done}; continue with --resume {}", run_dir.display()));
            interrupted_at = Some(done);
            break;
        }
    }
    progress.finish();
    if let Some(sync) = &run.sync {
        log(&format!(
            "all-reduce: {:.2} s in all, {:.1} MiB per step from each of {} ranks",
            sync.time.as_secs_f64(),
            sync.bytes_per_step as f64 / (1 << 20) as f64,
            group.size()
        ));
    }
    let summary = TrainSummary {
        steps: interrupted_at.unwrap_or(stop),
        interrupted: interrupted_at.is_some(),
        tokens,
        final_loss: last_loss,
        eval: evals.last().cloned(),
        evals,
        checkpoint: last_checkpoint,
        flops_per_token: prep.flops_per_token,
        eval_seconds,
    };
    if root {
        write_atomic(&run_dir.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    Ok(summary)
}

/// With several ranks, that all of them set up the same run: the same settings, resumed at the same
/// step. (A run directory that not every rank sees, or sees stale, would make them differ.)
fn check_agreement(group: &ProcessGroup, prep: &Prepared) -> Result<()> {
    if !group.is_distributed() {
        return Ok(());
    }
    let text = format!("{}|{}|{}", prep.settings, prep.start_step, prep.start_tokens);
    let hash =
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    let (low, high) = (group.min(hash), group.max(hash));
    anyhow::ensure!(
        low == high,
        "the ranks set up different runs (settings or resumed step differ; this rank resumes at step {}): \
         every rank must see the same run directory, data and command line",
        prep.start_step
    );
    Ok(())
}
