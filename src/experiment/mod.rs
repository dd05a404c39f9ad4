//! The paper's experiment in one command: every arm's stage 1 at the same token budget, then stage 2 on
//! the same text with identical data order, seeds, schedule and embedding/head initialisation, and a
//! report of what pre-pre-training bought against training from scratch.

pub mod compare;
mod record;
mod report;
pub mod timing;
pub mod units;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Preset;
use crate::data::corpus::{collect_documents, default_corpus};
use crate::data::text::{tokenize, TextData};
use crate::data::tokenizer::Tokenizer;
use crate::distributed::ProcessGroup;
use crate::gpu::Gpu;
use crate::nca::complexity::Band;
use crate::train::trainer::{train, Stage, TrainOptions};

use record::{Record, Settings};
pub use report::{ArmResult, Report};
use timing::{Probe, StepTokens};
use units::{Shared, Task, Unit};

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
    /// A band sweep: one NCA arm per band (empty: one NCA arm at the preset's band).
    pub bands: Vec<Band>,
    pub seeds: Vec<u64>,
    /// Stage-1 tokens per arm (with a time budget: their ratio to `text_tokens`).
    pub pre_tokens: u64,
    /// Stage-2 tokens per arm.
    pub text_tokens: u64,
    /// Pick the token budgets so that the whole run takes about this many seconds on this device.
    pub time_budget_s: Option<f64>,
    /// Run only this part of the units (a job array's task).
    pub task: Option<Task>,
    /// Print the predicted wall time and stop.
    pub estimate_only: bool,
    pub embed_std: f32,
    pub out: PathBuf,
    /// True when the device is a CPU implementation: the report says the budgets cannot show the effect.
    pub demonstration: bool,
    /// The ranks every run trains with; rank 0 alone reads and writes the experiment's files.
    pub group: ProcessGroup,
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
        if !self.bands.is_empty() && !self.arms.contains(&Arm::Nca) {
            bail!("--bands sweeps the NCA arm's band: --arms must include nca");
        }
        if let Some(b) =
            self.bands.iter().enumerate().find_map(|(i, b)| self.bands[..i].contains(b).then_some(b))
        {
            bail!("--bands names {} twice", String::from(*b));
        }
        Ok(())
    }

    /// Tokens per optimiser step of stage 1 and stage 2.
    pub fn step_tokens(&self) -> StepTokens {
        let p = &self.preset;
        let ctx = u64::from(p.model.context);
        StepTokens {
            stage1: u64::from(p.train.batch) * u64::from(p.train.grad_accum) * ctx,
            stage2: u64::from(p.text.batch) * u64::from(p.text.grad_accum) * ctx,
        }
    }

    /// The settings `experiment.json` records and a rerun must repeat.
    fn settings(&self) -> Settings {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|d| d.display().to_string());
        Settings {
            preset_name: self.preset_name.clone(),
            preset: self.preset.clone(),
            corpus: path(&self.text).unwrap_or_else(|| format!("default ({})", self.tokenizer.name())),
            pre_text: path(&self.pre_text),
            arms: self.arms.clone(),
            bands: self.bands.clone(),
            seeds: self.seeds.clone(),
            stage1_tokens: self.pre_tokens,
            stage2_tokens: self.text_tokens,
            time_budget_s: self.time_budget_s,
            embed_std: self.embed_std,
            demonstration: self.demonstration,
        }
    }
}

/// The stage-2 corpus: the given directory, or the default corpus tokenized once into `out/corpus-*`.
fn stage2_corpus(cfg: &ExperimentConfig, log: &mut dyn FnMut(&str)) -> Result<(String, TextData)> {
    if let Some(dir) = &cfg.text {
        return Ok((dir.display().to_string(), TextData::open(dir)?));
    }
    let dir = cfg.out.join(format!("corpus-{}", cfg.tokenizer.name()));
    // Rank 0 tokenizes; every rank then maps the files.
    cfg.group.on_root(|| tokenize_default_corpus(cfg, &dir, log))?;
    Ok((
        format!(
            "default corpus (Rust sources of the locked dependencies, {} tokenizer)",
            cfg.tokenizer.name()
        ),
        TextData::open(&dir)?,
    ))
}

/// Tokenizes the default corpus into `dir`, unless an earlier run did.
fn tokenize_default_corpus(cfg: &ExperimentConfig, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<()> {
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
        tokenize(&docs, cfg.tokenizer, 0.05, dir, &mut |_, _| {})?;
    }
    Ok(())
}

/// How an invocation of the experiment ended.
pub enum Outcome {
    /// Its units ran (or had run); the report covers every finished unit of the experiment.
    Finished { report: Box<Report>, results: Vec<ArmResult> },
    /// A stop signal ended the named unit with a checkpoint; the same command resumes it.
    Interrupted { unit: String },
    /// `--estimate`: the prediction was printed and nothing trained.
    Estimated,
}

/// Seconds of a time budget kept back for writing the report.
const REPORT_RESERVE_S: f64 = 5.0;

/// Runs the experiment's units (this task's, with `--task`) that have not finished, resuming the one
/// cut short, and writes report.md, report.json and curves.png from every finished unit. `stop` ends
/// the running stage with a checkpoint.
pub fn run_experiment(
    gpu: &Gpu,
    cfg: &ExperimentConfig,
    stop: Option<Arc<AtomicBool>>,
    log: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let started = Instant::now();
    let group = &cfg.group;
    let mut quiet = |_: &str| {};
    let log: &mut dyn FnMut(&str) = if group.is_root() { log } else { &mut quiet };
    cfg.validate()?;
    let settings = cfg.settings();
    // A rerun with other settings is refused before any work.
    let existing = group.on_root(|| {
        let existing = record::read(&cfg.out)?;
        if let Some(r) = &existing {
            record::check(&cfg.out, r, &settings)?;
        }
        std::fs::create_dir_all(&cfg.out).with_context(|| format!("cannot create {}", cfg.out.display()))?;
        Ok(existing)
    })?;
    let all = units::plan(&cfg.arms, &cfg.bands, &cfg.seeds);
    let mine = match cfg.task {
        Some(t) => t.select(&all)?,
        None => &all[..],
    };
    let (corpus_label, corpus) = stage2_corpus(cfg, log)?;
    let pre_text = match &cfg.pre_text {
        Some(d) => Some(TextData::open(d)?),
        None => None,
    };
    let mut shared = Shared {
        cfg,
        budgets: cfg.step_tokens().for_tokens(cfg.pre_tokens, cfg.text_tokens),
        corpus_label: &corpus_label,
        corpus: &corpus,
        pre_text: pre_text.as_ref(),
        stop,
    };
    let with_stage1 = all.iter().filter(|u| u.arm != Arm::Scratch).count();
    let record = match existing {
        Some(r) => r,
        None => {
            // The ranks time the same steps; rank 0's timing decides the budgets for all of them.
            let timed = probe(gpu, &shared, &all, log)?;
            let Some(probe) = group.on_root(|| Ok(timed))? else {
                return Ok(Outcome::Interrupted { unit: "the timed steps".into() });
            };
            let budgets = match cfg.time_budget_s {
                Some(budget) => {
                    let left = budget - started.elapsed().as_secs_f64() - REPORT_RESERVE_S;
                    let ratio = (cfg.pre_tokens, cfg.text_tokens);
                    timing::budgets_for_time(&probe, cfg.step_tokens(), ratio, all.len(), with_stage1, left)?
                }
                None => shared.budgets,
            };
            let r = Record::new(settings, budgets, corpus_label.clone(), corpus.vocab_size, probe);
            if cfg.estimate_only {
                log(&prediction(&r, &all, mine));
                return Ok(Outcome::Estimated);
            }
            group.on_root(|| record::create(&cfg.out, &r))?
        }
    };
    log(&prediction(&record, &all, mine));
    if cfg.estimate_only {
        return Ok(Outcome::Estimated);
    }
    shared.budgets = record.budgets;
    for (i, unit) in mine.iter().enumerate() {
        let place = format!("[{}/{}] {}", i + 1, mine.len(), unit.name());
        if group.on_root(|| units::read_result(&cfg.out, unit))?.is_some() {
            log(&format!("{place}: finished earlier"));
            continue;
        }
        log(&format!("{place}: {}", unit.dir(&cfg.out).display()));
        if shared.run(gpu, unit, log)?.is_none() {
            return Ok(Outcome::Interrupted { unit: unit.name() });
        }
    }
    let (report, results) = group.on_root(|| report::from_dir(&cfg.out, &record))?;
    Ok(Outcome::Finished { report: Box::new(report), results })
}

/// The predicted wall time of the whole run, of its longest unit and of this task's units.
fn prediction(record: &Record, all: &[Unit], mine: &[Unit]) -> String {
    let p = &record.probe;
    let unit_s = |u: &Unit| p.unit_seconds(&record.budgets, u.arm != Arm::Scratch);
    let longest = all.iter().map(unit_s).fold(0.0, f64::max);
    let total: f64 = all.iter().map(unit_s).sum();
    let b = &record.budgets;
    let mut s = format!(
        "budgets: {} stage-1 steps ({} tokens) and {} stage-2 steps ({} tokens) per unit\n\
         predicted wall time: {} for the whole run ({} units), {} for the longest unit",
        b.stage1_steps,
        b.stage1_tokens,
        b.stage2_steps,
        b.stage2_tokens,
        timing::format_seconds(total),
        all.len(),
        timing::format_seconds(longest)
    );
    if mine.len() < all.len() {
        let share: f64 = mine.iter().map(unit_s).sum();
        s += &format!("; {} for this task's {} units", timing::format_seconds(share), mine.len());
    }
    s
}

/// Times a few steps of each stage in a directory of its own (removed after): stage 1 of the first
/// arm that has one, and stage 2. None when a stop signal cut it short.
fn probe(gpu: &Gpu, shared: &Shared, all: &[Unit], log: &mut dyn FnMut(&str)) -> Result<Option<Probe>> {
    let group = &shared.cfg.group;
    let id = group.on_root(|| Ok(std::process::id()))?;
    let dir = shared.cfg.out.join(format!(".probe-{id}"));
    log(&format!("timing {} steps of each stage to predict the run's wall time", timing::PROBE_STEPS));
    let result = (|| -> Result<Option<Probe>> {
        let stage1 = match all.iter().find(|u| u.arm != Arm::Scratch) {
            Some(u) => match time_stage(gpu, shared.stage1(u, timing::PROBE_STEPS, dir.join("stage1"))?)? {
                Some(c) => Some(c),
                None => return Ok(None),
            },
            None => None,
        };
        let first = all.first().context("an experiment has units")?;
        let opts = shared.stage2(first, timing::PROBE_STEPS, None, dir.join("stage2"));
        Ok(time_stage(gpu, opts)?.map(|stage2| Probe { stage1, stage2 }))
    })();
    if group.is_root() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// The cost of a stage from a short run of it, logging every step. Stage 2 evaluates after every
/// step: a unit's stage 2 evaluates ten times, so its evaluations weigh in its time.
fn time_stage(gpu: &Gpu, mut opts: TrainOptions) -> Result<Option<timing::StageCost>> {
    let steps = timing::PROBE_STEPS;
    let (t, eval_every) = match opts.stage {
        Stage::Pre => (&mut opts.preset.train, steps),
        Stage::Text => (&mut opts.preset.text, 1),
    };
    (t.log_every, t.eval_every, t.checkpoint_every) = (1, eval_every, steps);
    let start = Instant::now();
    let summary = train(gpu, &opts, &mut |_| {})?;
    if summary.interrupted {
        return Ok(None);
    }
    let total = start.elapsed().as_secs_f64();
    let step_ms = opts.group.on_root(|| timing::logged_step_ms(&opts.run_dir))?;
    timing::StageCost::from_probe(total, &step_ms, summary.evals.len(), summary.eval_seconds).map(Some)
}

/// The report of the experiment in `dir` from its finished units (written as report.md, report.json
/// and curves.png), for `ncalm experiment report` and the tasks of a job array.
pub fn report_dir(dir: &Path) -> Result<(Report, Vec<ArmResult>)> {
    let Some(record) = record::read(dir)? else {
        let both = ["transformer", "nca"].iter().any(|a| dir.join(a).join(record::RECORD_FILE).exists());
        bail!(
            "{} holds no experiment (no {}){}",
            dir.display(),
            record::RECORD_FILE,
            if both { ": with --arch both, give its transformer/ or nca/ directory" } else { "" }
        );
    };
    report::from_dir(dir, &record)
}

/// Where the experiment writes its files.
pub fn report_paths(out: &Path) -> [PathBuf; 3] {
    [out.join("report.md"), out.join("report.json"), out.join("curves.png")]
}
