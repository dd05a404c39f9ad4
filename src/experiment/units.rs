//! The units of an experiment. A unit is one arm (with its band, in a band sweep) and one seed: its
//! stage 1 and its stage 2, in a directory of its own, `seed-S/ARM/`. A unit records its result there
//! (`result.json`) when it ends, so a rerun skips it; a stage cut short resumes from its last
//! checkpoint; and `--task I/N` spreads the units over the tasks of a job array.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::record::Budgets;
use super::report::ArmResult;
use super::timing::stage2_eval_every;
use super::{Arm, ExperimentConfig};
use crate::data::text::TextData;
use crate::data::Dyck;
use crate::gpu::Gpu;
use crate::model::stage2_init::Stage2Init;
use crate::model::ModelConfig;
use crate::nca::complexity::Band;
use crate::train::checkpoint::{self, TrainerState};
use crate::train::metrics::EvalLog;
use crate::train::trainer::{train, Stage, StageData, Start, TrainOptions};
use crate::util::write_atomic;

/// A unit's result, written when it ends.
const RESULT_FILE: &str = "result.json";
/// A stage's wall time, written when it ends.
const TIME_FILE: &str = "time.json";
/// Checkpoints per stage: a killed unit loses at most a fifth of a stage.
const CHECKPOINTS: u64 = 5;

/// One arm and seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unit {
    pub arm: Arm,
    /// The NCA rules' band, in a band sweep.
    pub band: Option<Band>,
    pub seed: u64,
}

/// The name of an arm (with its band, in a band sweep), as tables show it.
pub fn arm_label(arm: Arm, band: Option<Band>) -> String {
    match band {
        Some(b) => format!("{} {}", arm.name(), String::from(b)),
        None => arm.name().to_string(),
    }
}

impl Unit {
    pub fn label(&self) -> String {
        arm_label(self.arm, self.band)
    }

    /// `nca seed 2`, as logs and the report name a unit.
    pub fn name(&self) -> String {
        format!("{} seed {}", self.label(), self.seed)
    }

    pub fn dir(&self, out: &Path) -> PathBuf {
        let arm = match self.band {
            Some(b) => format!("{}-{:?}-{:?}", self.arm.name(), b.lower, b.upper),
            None => self.arm.name().to_string(),
        };
        out.join(format!("seed-{}", self.seed)).join(arm)
    }
}

/// Every unit of an experiment in a fixed order: seeds, then arms (each NCA band in turn).
pub fn plan(arms: &[Arm], bands: &[Band], seeds: &[u64]) -> Vec<Unit> {
    let mut units = Vec::new();
    for &seed in seeds {
        for &arm in arms {
            if arm == Arm::Nca && !bands.is_empty() {
                units.extend(bands.iter().map(|&b| Unit { arm, band: Some(b), seed }));
            } else {
                units.push(Unit { arm, band: None, seed });
            }
        }
    }
    units
}

/// `--task I/N`: the I-th of N contiguous parts of the units (0 <= I < N).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    pub index: usize,
    pub count: usize,
}

impl Task {
    pub fn parse(text: &str) -> Result<Self> {
        let parsed =
            text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => bail!("--task must be written I/N with 0 <= I < N (e.g. 3/9), got {text:?}"),
        }
    }

    /// This task's units: contiguous, so that with fewer tasks than units each takes whole seeds.
    pub fn select<'a>(&self, units: &'a [Unit]) -> Result<&'a [Unit]> {
        if self.count > units.len() {
            bail!(
                "--task {}/{}: this experiment has {} units, so N can be at most {}",
                self.index,
                self.count,
                units.len(),
                units.len()
            );
        }
        let at = |i: usize| units.len() * i / self.count;
        Ok(&units[at(self.index)..at(self.index + 1)])
    }
}

/// Wall time of a stage in the invocation that finished it, and the steps that invocation ran.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTime {
    pub seconds: f64,
    pub steps: u64,
}

/// What a finished unit records.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitResult {
    pub result: ArmResult,
    /// The NCA arm's last stage-1 evaluation.
    pub nca_stage1: Option<EvalLog>,
    pub device: String,
    pub stage1_time: Option<StageTime>,
    pub stage2_time: Option<StageTime>,
}

/// The result `unit` recorded in `out`, if it has finished.
pub fn read_result(out: &Path, unit: &Unit) -> Result<Option<UnitResult>> {
    let path = unit.dir(out).join(RESULT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid unit result", path.display()))
            .map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// What the units of one experiment share.
pub struct Shared<'a> {
    pub cfg: &'a ExperimentConfig,
    pub budgets: Budgets,
    pub corpus_label: &'a str,
    pub corpus: &'a TextData,
    pub pre_text: Option<&'a TextData>,
    /// Set by Ctrl-C or SIGTERM: the running stage stops with a checkpoint.
    pub stop: Option<Arc<AtomicBool>>,
}

fn checkpoint_every(steps: u64) -> u64 {
    steps.div_ceil(CHECKPOINTS).max(1)
}

impl Shared<'_> {
    /// Stage 1 of `unit` (not scratch), `steps` long, in `dir`.
    pub fn stage1(&self, unit: &Unit, steps: u64, dir: PathBuf) -> Result<TrainOptions> {
        let mut preset = self.cfg.preset.clone();
        if let Some(band) = unit.band {
            preset.data.band = band;
        }
        // Stage 1 stops at the end of its warm-up, at peak learning rate, as the reference's transferred
        // checkpoint does (step 5,000 of a 50,000-step schedule).
        let t = &mut preset.train;
        t.seed = unit.seed;
        t.warmup_steps = steps;
        t.warmup_fraction = 0.0;
        t.total_steps = steps * 10;
        t.eval_every = steps;
        t.checkpoint_every = checkpoint_every(steps);
        t.log_every = t.log_every.min(steps);
        let data = match unit.arm {
            Arm::Nca => StageData::Nca,
            Arm::Dyck => StageData::Dyck(Dyck::PAPER),
            Arm::Text => {
                let t = self.pre_text.context("the text arm needs --pre-text")?;
                StageData::Text {
                    label: "second corpus".into(),
                    train: t.train.clone(),
                    val: t.val.clone(),
                    vocab: t.vocab_size,
                }
            }
            Arm::Scratch => bail!("the scratch arm has no stage 1"),
        };
        Ok(self.options(preset, Stage::Pre, data, Start::Fresh, steps, dir))
    }

    /// Stage 2 of `unit`, `steps` long, from the stage-1 checkpoint `from` (none: scratch), in `dir`.
    pub fn stage2(&self, unit: &Unit, steps: u64, from: Option<PathBuf>, dir: PathBuf) -> TrainOptions {
        let mut preset = self.cfg.preset.clone();
        let t = &mut preset.text;
        t.seed = unit.seed;
        t.total_steps = steps;
        t.eval_every = stage2_eval_every(steps);
        t.checkpoint_every = checkpoint_every(steps);
        t.log_every = t.log_every.min(t.eval_every);
        preset.model.vocab_size = 0;
        let data = StageData::Text {
            label: self.corpus_label.to_string(),
            train: self.corpus.train.clone(),
            val: self.corpus.val.clone(),
            vocab: self.corpus.vocab_size,
        };
        let start =
            Start::Stage2 { from, init: Stage2Init { embed_std: self.cfg.embed_std, ..Default::default() } };
        self.options(preset, Stage::Text, data, start, steps, dir)
    }

    fn options(
        &self,
        preset: crate::config::Preset,
        stage: Stage,
        data: StageData,
        start: Start,
        steps: u64,
        run_dir: PathBuf,
    ) -> TrainOptions {
        TrainOptions {
            preset,
            stage,
            data,
            start,
            run_dir,
            stop_step: Some(steps),
            resume: false,
            peak_flops: None,
            stop_signal: self.stop.clone(),
            group: self.cfg.group.clone(),
        }
    }

    /// Runs what is left of `unit` and records its result; None when a stop signal cut it short.
    pub fn run(&self, gpu: &Gpu, unit: &Unit, log: &mut dyn FnMut(&str)) -> Result<Option<UnitResult>> {
        let group = &self.cfg.group;
        let dir = unit.dir(&self.cfg.out);
        let b = self.budgets;
        let stage1 = if unit.arm == Arm::Scratch {
            None
        } else {
            log(&format!("{}: stage 1, {} steps ({} tokens)", unit.name(), b.stage1_steps, b.stage1_tokens));
            let opts = self.stage1(unit, b.stage1_steps, dir.join("stage1"))?;
            match run_stage(gpu, opts, log)? {
                Some(s) => Some(s),
                None => return Ok(None),
            }
        };
        log(&format!("{}: stage 2, {} steps ({} tokens)", unit.name(), b.stage2_steps, b.stage2_tokens));
        let from = stage1.as_ref().map(|s| s.checkpoint.clone());
        let Some(stage2) = run_stage(gpu, self.stage2(unit, b.stage2_steps, from, dir.join("stage2")), log)?
        else {
            return Ok(None);
        };
        let result = UnitResult {
            result: ArmResult {
                arm: unit.arm,
                band: unit.band,
                seed: unit.seed,
                curve: stage2.evals.iter().map(|e| (e.tokens as f64, e.val_perplexity)).collect(),
                stage1_flops: stage1.as_ref().map_or(0.0, |s| s.tokens as f64 * s.flops_per_token),
                flops_per_token: stage2.flops_per_token,
            },
            nca_stage1: stage1
                .as_ref()
                .filter(|_| unit.arm == Arm::Nca)
                .and_then(|s| s.evals.last().cloned()),
            device: gpu.describe(),
            stage1_time: stage1.and_then(|s| s.time),
            stage2_time: stage2.time,
        };
        group.on_root(|| {
            write_atomic(&dir.join(RESULT_FILE), (serde_json::to_string_pretty(&result)? + "\n").as_bytes())
        })?;
        Ok(Some(result))
    }
}

/// A finished stage, as its run directory holds it.
#[derive(Serialize, Deserialize)]
struct StageOutcome {
    checkpoint: PathBuf,
    tokens: u64,
    flops_per_token: f64,
    evals: Vec<EvalLog>,
    time: Option<StageTime>,
}

/// Trains what is left of a stage: nothing when its last checkpoint is at its end, else from that
/// checkpoint or from the start. None when a stop signal ended it early (with a checkpoint).
fn run_stage(gpu: &Gpu, mut opts: TrainOptions, log: &mut dyn FnMut(&str)) -> Result<Option<StageOutcome>> {
    let dir = opts.run_dir.clone();
    let group = opts.group.clone();
    let stop = opts.stop_step.context("a unit's stage stops at its budget")?;
    let at = group.on_root(|| latest_state(&dir))?.map(|s| s.step);
    if at == Some(stop) {
        log(&format!("  finished earlier: {}", dir.display()));
    } else {
        if let Some(step) = at {
            log(&format!("  resuming {} at step {step} of {stop}", dir.display()));
            opts.resume = true;
        }
        let start = Instant::now();
        let summary = train(gpu, &opts, &mut |l| log(&format!("  {l}")))?;
        if summary.interrupted {
            return Ok(None);
        }
        let time = StageTime { seconds: start.elapsed().as_secs_f64(), steps: stop - at.unwrap_or(0) };
        group.on_root(|| write_atomic(&dir.join(TIME_FILE), serde_json::to_string(&time)?.as_bytes()))?;
    }
    group
        .on_root(|| finished_stage(&dir))
        .with_context(|| format!("reading the finished stage in {}", dir.display()))
        .map(Some)
}

/// The trainer state of a run directory's latest checkpoint, if it has one.
fn latest_state(dir: &Path) -> Result<Option<TrainerState>> {
    if !dir.join(checkpoint::LATEST_FILE).exists() {
        return Ok(None);
    }
    let path = checkpoint::resolve(dir)?.join(checkpoint::TRAINER_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("{} is not a trainer state", path.display()))?,
    ))
}

/// The outcome of the finished stage in `dir`, read from its files alone, so that a stage finished by
/// an earlier invocation gives the very result it gave then. Its earlier checkpoints are removed.
fn finished_stage(dir: &Path) -> Result<StageOutcome> {
    let checkpoint = checkpoint::resolve(dir)?;
    let state = latest_state(dir)?.context("the stage has no checkpoint")?;
    let config_path = checkpoint.join(checkpoint::CONFIG_FILE);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?,
    )?;
    let model: ModelConfig = serde_json::from_value(config["ncalm"].clone())
        .with_context(|| format!("{}: no \"ncalm\" model settings", config_path.display()))?;
    let time = std::fs::read_to_string(dir.join(TIME_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("checkpoint-") && path != checkpoint {
            std::fs::remove_dir_all(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    Ok(StageOutcome {
        checkpoint,
        tokens: state.tokens,
        flops_per_token: model.flops_per_token(model.context),
        evals: crate::train::metrics::evaluations(dir)?,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(n: usize) -> Vec<Unit> {
        (0..n as u64).map(|seed| Unit { arm: Arm::Scratch, band: None, seed }).collect()
    }

    #[test]
    fn tasks_split_the_units_into_contiguous_parts() {
        let all = units(9);
        let seeds = |t: &str| -> Vec<u64> {
            Task::parse(t).unwrap().select(&all).unwrap().iter().map(|u| u.seed).collect()
        };
        assert_eq!(seeds("4/9"), vec![4]);
        assert_eq!(seeds("0/3"), vec![0, 1, 2]);
        assert_eq!(seeds("1/2"), vec![4, 5, 6, 7, 8]);
        let every: Vec<u64> = (0..4).flat_map(|i| seeds(&format!("{i}/4"))).collect();
        assert_eq!(every, (0..9).collect::<Vec<u64>>());
        for bad in ["3/3", "1", "a/2", "-1/2", "0/0"] {
            assert!(Task::parse(bad).unwrap_err().to_string().contains("I/N"), "{bad}");
        }
        let err = Task::parse("0/10").unwrap().select(&all).unwrap_err().to_string();
        assert!(err.contains("9 units"), "{err}");
    }

    #[test]
    fn band_units_have_their_own_names_and_directories() {
        let band = Band::new(0.3, 0.6).unwrap();
        let u = Unit { arm: Arm::Nca, band: Some(band), seed: 2 };
        assert_eq!(u.name(), "nca 0.3:0.6 seed 2");
        assert_eq!(u.dir(Path::new("out")), Path::new("out/seed-2/nca-0.3-0.6"));
        let s = Unit { arm: Arm::Scratch, band: None, seed: 2 };
        assert_eq!(s.dir(Path::new("out")), Path::new("out/seed-2/scratch"));
    }
}
