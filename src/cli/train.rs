use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use ncalm::config::Preset;
use ncalm::data::text::TextData;
use ncalm::data::Dyck;
use ncalm::distributed::ProcessGroup;
use ncalm::model::stage2_init::{parse_layers, Part, Stage2Init};
use ncalm::train::checkpoint;
use ncalm::train::trainer::{train, Stage, StageData, Start, TrainOptions};
use ncalm::{Gpu, GpuOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    /// Stage 1: pre-pre-training on NCA sequences (simulated on the GPU, or --data from `generate`).
    Nca,
    /// Stage 1 baseline: pre-pre-training on Dyck-64 bracket sequences.
    Dyck,
    /// Stage 1 baseline: pre-pre-training on a tokenized corpus (--data), with stage 1's settings.
    Pretext,
    /// Stage 2: language pre-training on a tokenized corpus (--data), from --init or from scratch.
    Text,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum, default_value = "nca")]
    stage: StageArg,
    /// A preset name (tiny, small, paper-1.6b, nca-tiny, nca-small) or a TOML file.
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
    /// Stop after this many optimiser steps (default: the schedule's length, total_steps).
    #[arg(long, conflicts_with = "tokens")]
    steps: Option<u64>,
    /// Stop after this many training tokens (rounded up to whole steps).
    #[arg(long)]
    tokens: Option<u64>,
    /// Data: `generate` output (nca), or a tokenized corpus / nanoGPT-format directory (text, pretext).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Stage 2: start from this stage-1 checkpoint's blocks (without it: from scratch).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Stage 2: standard deviation of the new embedding (the reference uses 1.0).
    #[arg(long, default_value_t = 1.0)]
    embed_std: f32,
    /// Stage 2 ablation: re-initialise these parts (attn or conv, mlp, norm; comma-separated) in --layers.
    #[arg(long, value_delimiter = ',')]
    reinit: Vec<String>,
    /// Stage 2: keep these parts (attn or conv, mlp, norm, embed, head) fixed during training, in --layers.
    #[arg(long, value_delimiter = ',')]
    freeze: Vec<String>,
    /// Layers the ablations act on: A..B (B exclusive) or a single layer; default all.
    #[arg(long)]
    layers: Option<String>,
    /// The device's peak FLOP/s in TFLOP/s for the MFU estimate (known GPUs are looked up).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

fn text_data(dir: &Option<PathBuf>, stage: &str) -> Result<StageData> {
    let Some(dir) = dir else {
        bail!("--stage {stage} needs --data DIR (from `ncalm tokenize`, or nanoGPT's train.bin/val.bin)")
    };
    let text = TextData::open(dir)?;
    Ok(StageData::Text {
        label: dir.display().to_string(),
        train: text.train,
        val: text.val,
        vocab: text.vocab_size,
    })
}

/// `ncalm train`, alone or as one rank of an MPI job (`mpirun -np N ncalm train ...`).
pub fn run(args: TrainArgs) -> Result<()> {
    let group = ProcessGroup::launched()?;
    let result = run_in(&group, args);
    let code = group.finish(result)?;
    drop(group);
    if let Some(code) = code {
        std::process::exit(code);
    }
    Ok(())
}

/// Everything a rank needs before training, the same on every rank.
fn options(args: &TrainArgs, group: &ProcessGroup) -> Result<(Gpu, TrainOptions)> {
    let (run_dir, resume) = match (&args.out, &args.resume) {
        (Some(o), None) => (o.clone(), false),
        (None, Some(r)) => (r.clone(), true),
        _ => bail!("give --out RUN for a new run or --resume RUN to continue one"),
    };
    let preset = if resume && args.overrides.is_empty() && args.preset == "small" {
        // A resumed run takes its settings from its checkpoint unless the command repeats them.
        let ck = checkpoint::load(&run_dir)?;
        let mut p = Preset::from_settings(&ck.state.settings)?;
        p.model.vocab_size = 0;
        p
    } else {
        Preset::load(&args.preset, &args.overrides)?
    };
    let parts = |names: &[String]| names.iter().map(|n| Part::parse(n)).collect::<Result<Vec<_>>>();
    let stage2 = Stage2Init {
        embed_std: args.embed_std,
        reinit: parts(&args.reinit)?,
        freeze: parts(&args.freeze)?,
        layers: args.layers.as_deref().map(parse_layers).transpose()?,
    };
    if !(args.embed_std.is_finite() && args.embed_std > 0.0) {
        bail!("--embed-std must be a positive number, got {}", args.embed_std);
    }
    let is_text = args.stage == StageArg::Text;
    if !is_text && (args.init.is_some() || !stage2.reinit.is_empty() || !stage2.freeze.is_empty()) {
        bail!("--init, --reinit and --freeze belong to stage 2 (--stage text)");
    }
    if stage2.reinit.contains(&Part::Embed) || stage2.reinit.contains(&Part::Head) {
        bail!("--reinit takes attn, conv, mlp or norm: the embedding and head are always new in stage 2");
    }
    let (stage, data, start) = match args.stage {
        StageArg::Nca => {
            (Stage::Pre, args.data.clone().map_or(StageData::Nca, StageData::NcaFiles), Start::Fresh)
        }
        StageArg::Dyck => (Stage::Pre, StageData::Dyck(Dyck::PAPER), Start::Fresh),
        StageArg::Pretext => (Stage::Pre, text_data(&args.data, "pretext")?, Start::Fresh),
        StageArg::Text => (
            Stage::Text,
            text_data(&args.data, "text")?,
            Start::Stage2 { from: args.init.clone(), init: stage2 },
        ),
    };
    let t = if stage == Stage::Text { &preset.text } else { &preset.train };
    let tokens_per_step = u64::from(t.batch) * u64::from(t.grad_accum) * u64::from(preset.model.context);
    let stop_step = match (args.steps, args.tokens) {
        (Some(0), _) | (_, Some(0)) => bail!("--steps and --tokens must be positive"),
        (Some(s), _) => Some(s),
        (None, Some(n)) => Some(n.div_ceil(tokens_per_step)),
        (None, None) => None,
    };
    if let Some(p) = args.peak_tflops {
        if !(p.is_finite() && p > 0.0) {
            bail!("--peak-tflops must be a positive number, got {p}");
        }
    }
    let gpu = Gpu::new(&GpuOptions { local_rank: Some(group.local_rank()), ..GpuOptions::default() })?;
    let stop = super::stop_on_interrupt()?;
    let opts = TrainOptions {
        group: group.clone(),
        stop_signal: Some(stop),
        preset,
        stage,
        data,
        start,
        run_dir,
        stop_step,
        resume,
        peak_flops: args.peak_tflops.map(|t| t * 1e12),
    };
    Ok((gpu, opts))
}

/// Trains; the exit code to end with when not 0.
fn run_in(group: &ProcessGroup, args: TrainArgs) -> Result<Option<i32>> {
    let (gpu, opts) = group.settle(options(&args, group))?;
    if group.is_distributed() {
        eprintln!("{}training on {}", group.prefix(), gpu.describe());
    }
    let summary = train(&gpu, &opts, &mut |line| eprintln!("{line}"))?;
    if !group.is_root() {
        return Ok(summary.interrupted.then_some(130));
    }
    let eval = summary.eval.as_ref().map_or(String::new(), |e| match e.val_cell_accuracy {
        Some(acc) => format!(", val loss {:.4}, cell accuracy {:.2}%", e.val_loss, 100.0 * acc),
        None => format!(", val loss {:.4}, val perplexity {:.3}", e.val_loss, e.val_perplexity),
    });
    if summary.interrupted {
        println!("interrupted after {} steps; checkpoint {}", summary.steps, summary.checkpoint.display());
        return Ok(Some(130));
    }
    println!(
        "trained {} steps ({} tokens): loss {:.4}{eval}; checkpoint {}",
        summary.steps,
        summary.tokens,
        summary.final_loss,
        summary.checkpoint.display()
    );
    Ok(None)
}
