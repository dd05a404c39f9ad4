//! The paper's experiment in one command: every arm's stage 1 at the same token budget, then stage 2 on
//! the same text with identical data order, seeds, schedule and embedding/head initialisation, and a
//! report of what pre-pre-training bought against training from scratch.

pub mod compare;
mod report;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Preset;
use crate::data::corpus::{collect_documents, default_corpus};
use crate::data::text::{tokenize, TextData};
use crate::data::tokenizer::Tokenizer;
use crate::data::Dyck;
use crate::gpu::Gpu;
use crate::model::stage2_init::Stage2Init;
use crate::train::metrics::EvalLog;
use crate::train::trainer::{train, Stage, StageData, Start, TrainOptions};

pub use report::{build_report, ArmResult, Report};

/// One way of starting stage 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    /// No stage 1.
    Scratch,
    /// Stage 1 on NCA sequences.
    Nca,
    /// Stage 1 on Dyck-64 sequences.
    Dyck,
    /// Stage 1 on a second natural-text corpus.
    Text,
}

impl Arm {
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.trim() {
            "scratch" => Arm::Scratch,
            "nca" => Arm::Nca,
            "dyck" => Arm::Dyck,
            "text" => Arm::Text,
            other => bail!("unknown arm {other:?}: expected scratch, nca, dyck or text"),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Arm::Scratch => "scratch",
            Arm::Nca => "nca",
            Arm::Dyck => "dyck",
            Arm::Text => "text",
        }
    }
}

/// Everything the experiment needs.
#[derive(Clone, Debug)]
pub struct ExperimentConfig {
    pub preset_name: String,
    pub preset: Preset,
    /// Stage 2's corpus (tokenized, or nanoGPT-format); None: the default corpus.
    pub text: Option<PathBuf>,
    /// The second corpus of the `text` arm.
    pub pre_text: Option<PathBuf>,
    /// Tokenizer for the default corpus.
    pub tokenizer: Tokenizer,
    pub arms: Vec<Arm>,
    pub seeds: Vec<u64>,
    /// Stage-1 tokens per arm.
    pub pre_tokens: u64,
    /// Stage-2 tokens per arm.
    pub text_tokens: u64,
    pub embed_std: f32,
    pub out: PathBuf,
    /// True when the device is a CPU implementation: the report says the budgets cannot show the effect.
    pub demonstration: bool,
}

impl ExperimentConfig {
    pub fn validate(&self) -> Result<()> {
        if !self.arms.contains(&Arm::Scratch) {
            bail!("--arms must include scratch: every other arm is measured against it");
        }
        if self.arms.len() < 2 {
            bail!("--arms needs scratch and at least one pre-pre-training arm (nca, dyck, text)");
        }
        if self.arms.contains(&Arm::Text) && self.pre_text.is_none() {
            bail!("the text arm pre-pre-trains on a second corpus: give it with --pre-text DIR");
        }
        if self.seeds.is_empty() {
            bail!("--seeds needs at least one seed");
        }
        if self.pre_tokens == 0 || self.text_tokens == 0 {
            bail!("--nca-tokens and --text-tokens must be positive");
        }
        Ok(())
    }
}

/// The stage-2 corpus: the given directory, or the default corpus tokenized once into `out/corpus-*`.
fn stage2_corpus(cfg: &ExperimentConfig, log: &mut dyn FnMut(&str)) -> Result<(String, TextData)> {
    if let Some(dir) = &cfg.text {
        return Ok((dir.display().to_string(), TextData::open(dir)?));
    }
    let dir = cfg.out.join(format!("corpus-{}", cfg.tokenizer.name()));
    if !dir.join("manifest.json").exists() {
        let (files, summary) = default_corpus()?;
        log(&format!(
            "default corpus: {} files ({:.1} MB) from {} of {} locked packages; {} generated files ({:.1} MB) left out",
            summary.files_kept,
            summary.bytes_kept as f64 / 1e6,
            summary.packages_found,
            summary.packages_locked,
            summary.generated_files_left_out,
            summary.generated_bytes_left_out as f64 / 1e6
        ));
        let docs = collect_documents(&files)?;
        tokenize(&docs, cfg.tokenizer, 0.05, &dir, &mut |_, _| {})?;
    }
    Ok((
        format!(
            "default corpus (Rust sources of the locked dependencies, {} tokenizer)",
            cfg.tokenizer.name()
        ),
        TextData::open(&dir)?,
    ))
}

/// Runs the experiment; returns the report (also written as report.md, report.json, curves.png) and
/// every stage-2 run's curve.
pub fn run_experiment(
    gpu: &Gpu,
    cfg: &ExperimentConfig,
    log: &mut dyn FnMut(&str),
) -> Result<(Report, Vec<ArmResult>)> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
    let (corpus_label, corpus) = stage2_corpus(cfg, log)?;
    let pre_text = match &cfg.pre_text {
        Some(d) => Some(TextData::open(d)?),
        None => None,
    };
    let p = &cfg.preset;
    let ctx = u64::from(p.model.context);
    let pre_per_step = u64::from(p.train.batch) * u64::from(p.train.grad_accum) * ctx;
    let text_per_step = u64::from(p.text.batch) * u64::from(p.text.grad_accum) * ctx;
    let pre_steps = cfg.pre_tokens.div_ceil(pre_per_step);
    let text_steps = cfg.text_tokens.div_ceil(text_per_step);
    let mut results: Vec<ArmResult> = Vec::new();
    let mut nca_stage1: Vec<(u64, EvalLog)> = Vec::new();
    let runs = cfg.seeds.len() * (2 * cfg.arms.len() - 1);
    let mut run_index = 0;
    for &seed in &cfg.seeds {
        let seed_dir = cfg.out.join(format!("seed-{seed}"));
        for &arm in &cfg.arms {
            let stage1 = if arm == Arm::Scratch {
                None
            } else {
                run_index += 1;
                let mut preset = p.clone();
                // Stage 1 stops at the end of its warm-up, at peak learning rate, as the reference's
                // transferred checkpoint does (step 5,000 of a 50,000-step schedule).
                preset.train.seed = seed;
                preset.train.warmup_steps = pre_steps;
                preset.train.warmup_fraction = 0.0;
                preset.train.total_steps = pre_steps * 10;
                preset.train.eval_every = pre_steps;
                preset.train.checkpoint_every = pre_steps;
                preset.train.log_every = preset.train.log_every.min(pre_steps);
                let data = match arm {
                    Arm::Nca => StageData::Nca,
                    Arm::Dyck => StageData::Dyck(Dyck::PAPER),
                    Arm::Text => {
                        let t = pre_text.as_ref().expect("validated");
                        StageData::Text {
                            label: "second corpus".into(),
                            train: t.train.clone(),
                            val: t.val.clone(),
                            vocab: t.vocab_size,
                        }
                    }
                    Arm::Scratch => unreachable!(),
                };
                let dir = seed_dir.join(format!("{}-stage1", arm.name()));
                log(&format!(
                    "[{run_index}/{runs}] seed {seed}: {} stage 1, {pre_steps} steps ({} tokens)",
                    arm.name(),
                    pre_steps * pre_per_step
                ));
                let opts = TrainOptions {
                    preset,
                    stage: Stage::Pre,
                    data,
                    start: Start::Fresh,
                    run_dir: dir.clone(),
                    stop_step: Some(pre_steps),
                    resume: false,
                    peak_flops: None,
                    stop_signal: None,
                };
                let summary = train(gpu, &opts, &mut |l| log(&format!("  {l}")))?;
                if arm == Arm::Nca {
                    if let Some(e) = &summary.eval {
                        nca_stage1.push((seed, e.clone()));
                    }
                }
                Some((summary.checkpoint, summary.tokens as f64 * summary.flops_per_token))
            };
            let (stage1, stage1_flops) = stage1.map_or((None, 0.0), |(c, f)| (Some(c), f));
            run_index += 1;
            let mut preset = p.clone();
            preset.text.seed = seed;
            preset.text.total_steps = text_steps;
            preset.text.eval_every = (text_steps / 10).max(1);
            preset.text.checkpoint_every = text_steps;
            preset.text.log_every = preset.text.log_every.min(preset.text.eval_every);
            preset.model.vocab_size = 0;
            log(&format!(
                "[{run_index}/{runs}] seed {seed}: {} stage 2, {text_steps} steps ({} tokens)",
                arm.name(),
                text_steps * text_per_step
            ));
            let opts = TrainOptions {
                preset,
                stage: Stage::Text,
                data: StageData::Text {
                    label: corpus_label.clone(),
                    train: corpus.train.clone(),
                    val: corpus.val.clone(),
                    vocab: corpus.vocab_size,
                },
                start: Start::Stage2 {
                    from: stage1,
                    init: Stage2Init { embed_std: cfg.embed_std, ..Default::default() },
                },
                run_dir: seed_dir.join(arm.name()),
                stop_step: Some(text_steps),
                resume: false,
                peak_flops: None,
                stop_signal: None,
            };
            let summary = train(gpu, &opts, &mut |l| log(&format!("  {l}")))?;
            results.push(ArmResult {
                arm,
                seed,
                curve: summary.evals.iter().map(|e| (e.tokens as f64, e.val_perplexity)).collect(),
                stage1_flops,
                flops_per_token: summary.flops_per_token,
            });
        }
    }
    let report = build_report(
        cfg,
        &corpus_label,
        gpu,
        &results,
        &nca_stage1,
        pre_steps * pre_per_step,
        text_steps * text_per_step,
        corpus.vocab_size,
    )?;
    report::write(&cfg.out, &report, &results)?;
    Ok((report, results))
}

/// Where the experiment writes its files.
pub fn report_paths(out: &Path) -> [PathBuf; 3] {
    [out.join("report.md"), out.join("report.json"), out.join("curves.png")]
}
