//! `experiment.json`: the settings an experiment directory was started with, the budgets they came to
//! and the throughput they were sized by. The first invocation writes it; every later one (a rerun, a
//! task of a job array) must ask for the same settings and then takes the recorded budgets, so all its
//! units belong to one experiment whatever process runs them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::timing::Probe;
use super::Arm;
use crate::config::Preset;
use crate::nca::complexity::Band;
use crate::train::setup::first_difference;

pub const RECORD_FILE: &str = "experiment.json";
const FORMAT: &str = "ncalm-experiment-v1";

/// What the user asked for: every setting that changes a unit's result or the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub preset_name: String,
    pub preset: Preset,
    /// Stage 2's corpus: the directory as given, or `default (TOKENIZER)`.
    pub corpus: String,
    pub pre_text: Option<String>,
    pub arms: Vec<Arm>,
    /// The band sweep's bands (empty: one NCA arm at the preset's band).
    pub bands: Vec<Band>,
    pub seeds: Vec<u64>,
    /// Stage-1 and stage-2 tokens per arm as asked for; with a time budget, only their ratio counts.
    pub stage1_tokens: u64,
    pub stage2_tokens: u64,
    pub time_budget_s: Option<f64>,
    pub embed_std: f32,
    pub demonstration: bool,
}

/// The budgets every unit trains with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    pub stage1_steps: u64,
    pub stage2_steps: u64,
    pub stage1_tokens: u64,
    pub stage2_tokens: u64,
}

/// The contents of `experiment.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub format: String,
    pub settings: Settings,
    pub budgets: Budgets,
    /// The stage-2 corpus as the report describes it, and its vocabulary.
    pub corpus_label: String,
    pub corpus_vocab: u32,
    /// The timed steps the budgets and predictions come from.
    pub probe: Probe,
}

impl Record {
    pub fn new(
        settings: Settings,
        budgets: Budgets,
        corpus_label: String,
        corpus_vocab: u32,
        probe: Probe,
    ) -> Self {
        Self { format: FORMAT.into(), settings, budgets, corpus_label, corpus_vocab, probe }
    }
}

pub fn path(out: &Path) -> PathBuf {
    out.join(RECORD_FILE)
}

/// The record of the experiment in `out`, if one was started there.
pub fn read(out: &Path) -> Result<Option<Record>> {
    let path = path(out);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let record: Record = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid experiment record", path.display()))?;
    if record.format != FORMAT {
        bail!("{}: format {:?}, expected {FORMAT:?}", path.display(), record.format);
    }
    Ok(Some(record))
}

/// Fails, naming the first setting that differs, unless `settings` are those `record` was started with.
pub fn check(out: &Path, record: &Record, settings: &Settings) -> Result<()> {
    // Both sides as the text they are stored as, so that numbers compare exactly and read as written.
    let as_stored =
        |s: &Settings| -> Result<serde_json::Value> { Ok(serde_json::from_str(&serde_json::to_string(s)?)?) };
    let (old, new) = (as_stored(&record.settings)?, as_stored(settings)?);
    if let Some(diff) = first_difference(&old, &new, "") {
        bail!(
            "{} holds an experiment with other settings ({}): repeat its settings to resume it, or choose \
             another --out",
            out.display(),
            diff.replace("the run has", "the experiment has")
        );
    }
    Ok(())
}

/// Writes `record` unless another process recorded this experiment first; returns the record that
/// holds, checked against `record`'s settings.
pub fn create(out: &Path, record: &Record) -> Result<Record> {
    let path = path(out);
    let temp = out.join(format!(".{RECORD_FILE}.{}.partial", std::process::id()));
    crate::util::write_atomic(&temp, (serde_json::to_string_pretty(record)? + "\n").as_bytes())?;
    // A hard link never replaces an existing file: of tasks starting together, one record wins.
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(record.clone()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let winner = read(out)?.with_context(|| format!("{} vanished", path.display()))?;
            check(out, &winner, &record.settings)?;
            Ok(winner)
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::timing::StageCost;

    fn settings() -> Settings {
        Settings {
            preset_name: "tiny".into(),
            preset: Preset::load("tiny", &[]).unwrap(),
            corpus: "default (bytes)".into(),
            pre_text: None,
            arms: vec![Arm::Scratch, Arm::Nca],
            bands: vec![],
            seeds: vec![1, 2],
            stage1_tokens: 1024,
            stage2_tokens: 2048,
            time_budget_s: None,
            embed_std: 1.0,
            demonstration: true,
        }
    }

    fn record(s: Settings) -> Record {
        let cost = StageCost { setup_s: 1.0, step_s: 0.1, eval_s: 0.05 };
        let budgets = Budgets { stage1_steps: 4, stage2_steps: 8, stage1_tokens: 1024, stage2_tokens: 2048 };
        Record::new(s, budgets, "corpus".into(), 256, Probe { stage1: Some(cost), stage2: cost })
    }

    #[test]
    fn the_first_record_holds_and_other_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = record(settings());
        create(dir.path(), &first).unwrap();
        // A second process with the same settings adopts the first one's budgets.
        let mut second = record(settings());
        second.budgets.stage2_steps = 99;
        assert_eq!(create(dir.path(), &second).unwrap().budgets, first.budgets);
        let back = read(dir.path()).unwrap().unwrap();
        check(dir.path(), &back, &settings()).unwrap();
        let mut other = settings();
        other.preset.text.lr = 0.5;
        other.seeds = vec![1];
        let err = check(dir.path(), &back, &other).unwrap_err().to_string();
        assert!(err.contains("preset.text.lr: the experiment has 0.002, this command 0.5"), "{err}");
        let err = create(dir.path(), &record(other)).unwrap_err().to_string();
        assert!(err.contains("preset.text.lr"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(RECORD_FILE)]);
    }
}
