use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::model::Preset;
use crate::train::checkpoint;
use crate::train::trainer::{train_nca, TrainOptions};
use crate::{Gpu, GpuOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Stage 1: pre-pre-training on NCA sequences.
    Nca,
    /// Stage 2: language pre-training.
    Text,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value = "nca")]
    stage: Stage,
    /// A preset name (tiny, small, paper-1.6b) or a TOML file.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Override a preset setting, e.g. --set model.layers=4 --set train.lr=3e-4 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Run directory: checkpoints, metrics.jsonl, curves.png, summary.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint (same settings).
    #[arg(long, conflicts_with = "out")]
    resume: Option<PathBuf>,
    /// Stop after this many optimiser steps (default: train.total_steps, the schedule's length).
    #[arg(long, conflicts_with = "tokens")]
    steps: Option<u64>,
    /// Stop after this many training tokens (rounded up to whole steps).
    #[arg(long)]
    tokens: Option<u64>,
    /// Read sequences from `ncalm generate` output instead of simulating NCA on the fly.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The device's peak FLOP/s in TFLOP/s for the MFU estimate (known GPUs are looked up).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.stage == Stage::Text {
        bail!("--stage text (language pre-training) is not available yet; train stage 1 with --stage nca");
    }
    let (run_dir, resume) = match (&args.out, &args.resume) {
        (Some(o), None) => (o.clone(), false),
        (None, Some(r)) => (r.clone(), true),
        _ => bail!("give --out RUN for a new run or --resume RUN to continue one"),
    };
    let preset = if resume && args.overrides.is_empty() && args.preset == "small" {
        // A resumed run takes its settings from its checkpoint unless the command repeats them.
        let ck = checkpoint::load(&run_dir)?;
        let mut p: Preset = serde_json::from_value(strip_source(ck.state.settings.clone()))?;
        p.model.vocab_size = 0;
        p
    } else {
        Preset::load(&args.preset, &args.overrides)?
    };
    let tokens_per_step =
        u64::from(preset.train.batch) * u64::from(preset.train.grad_accum) * u64::from(preset.model.context);
    let stop_step = match (args.steps, args.tokens) {
        (Some(0), _) | (_, Some(0)) => bail!("--steps and --tokens must be positive"),
        (Some(s), _) => Some(s),
        (None, Some(t)) => Some(t.div_ceil(tokens_per_step)),
        (None, None) => None,
    };
    if let Some(p) = args.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            bail!("--peak-tflops must be a positive number, got {p}");
        }
    }
    let gpu = Gpu::new(&GpuOptions::default())?;
    let opts = TrainOptions {
        preset,
        run_dir,
        stop_step,
        data_dir: args.data,
        resume,
        peak_flops: args.peak_tflops.map(|t| t * 1e12),
    };
    let summary = train_nca(&gpu, &opts, &mut |line| eprintln!("{line}"))?;
    println!(
        "trained {} steps ({} tokens): loss {:.4}{}; checkpoint {}",
        summary.steps,
        summary.tokens,
        summary.final_loss,
        summary.eval.as_ref().map_or(String::new(), |e| format!(
            ", val loss {:.4}, cell accuracy {:.2}%",
            e.val_loss,
            100.0 * e.val_cell_accuracy
        )),
        summary.checkpoint.display()
    );
    Ok(())
}

/// The stored settings minus the fields the trainer adds.
fn strip_source(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("data_source");
    }
    v
}
