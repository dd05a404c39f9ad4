//! The experiment's report: final perplexities, paired differences against scratch, wins, the
//! convergence speed-up of docs/method.md section 6, and the NCA stage's per-frame loss.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::record::Record;
use super::timing::{format_seconds, Probe};
use super::units::{self, arm_label, StageTime, Unit, UnitResult};
use super::{report_paths, Arm};
use crate::model::ModelConfig;
use crate::nca::complexity::Band;
use crate::plot::{Canvas, Chart};
use crate::train::metrics::EvalLog;
use crate::util::write_atomic;

/// One stage-2 run's validation perplexity against stage-2 tokens, and what its training cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: Arm,
    /// The NCA rules' band, in a band sweep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
    pub seed: u64,
    pub curve: Vec<(f64, f64)>,
    /// Training FLOPs spent in stage 1 (0 for scratch).
    pub stage1_flops: f64,
    /// Stage 2's training FLOPs per token.
    pub flops_per_token: f64,
}

impl ArmResult {
    pub fn final_perplexity(&self) -> f64 {
        self.curve.last().map_or(f64::NAN, |p| p.1)
    }

    pub fn label(&self) -> String {
        arm_label(self.arm, self.band)
    }
}

/// Tokens at which a curve first reaches `target` (linear interpolation between evaluations).
pub fn tokens_to_reach(curve: &[(f64, f64)], target: f64) -> Option<f64> {
    let mut prev: Option<(f64, f64)> = None;
    for &(t, p) in curve {
        if p <= target {
            return Some(match prev {
                Some((t0, p0)) if p0 > p => t0 + (t - t0) * (p0 - target) / (p0 - p),
                _ => t,
            });
        }
        prev = Some((t, p));
    }
    None
}

/// How an arm compares with scratch on one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Paired {
    pub seed: u64,
    pub perplexity: f64,
    pub scratch: f64,
    /// (arm - scratch) / scratch, in percent (negative: the arm is better).
    pub difference_pct: f64,
    /// Tokens scratch needs to reach its final perplexity over tokens this arm needs (> 1: faster).
    pub speedup: Option<f64>,
    /// When the arm never reaches scratch's final perplexity: the share of the budget at which scratch
    /// reached this arm's final value.
    pub scratch_reached_arm_at: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmSummary {
    pub arm: Arm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
    pub paired: Vec<Paired>,
    pub mean_difference_pct: f64,
    pub std_difference_pct: f64,
    pub wins: usize,
    pub mean_speedup: Option<f64>,
    /// Standard deviation of the speed-up over the seeds that have one.
    pub std_speedup: Option<f64>,
}

impl ArmSummary {
    pub fn label(&self) -> String {
        arm_label(self.arm, self.band)
    }
}

/// The NCA stage's final validation of one unit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NcaStage1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<Band>,
    pub seed: u64,
    pub eval: EvalLog,
}

/// One unit's measured and predicted wall time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UnitTime {
    pub unit: String,
    pub stage1: Option<StageTime>,
    pub stage2: Option<StageTime>,
    pub predicted_s: f64,
}

/// Measured and predicted wall times.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Times {
    /// The costs measured on the timed steps the budgets come from.
    pub probe: Probe,
    pub predicted_run_s: f64,
    pub units: Vec<UnitTime>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub preset: String,
    /// The model, described (architecture, sizes, parameters).
    pub model: String,
    pub device: String,
    pub corpus: String,
    pub seeds: Vec<u64>,
    pub stage1_tokens: u64,
    pub stage2_tokens: u64,
    pub embed_std: f32,
    pub demonstration: bool,
    pub scratch_final: Vec<(u64, f64)>,
    pub arms: Vec<ArmSummary>,
    /// A band sweep: the bands' NCA arms, best first (by mean paired perplexity difference, then speed-up).
    pub band_ranking: Vec<ArmSummary>,
    /// The NCA stage's final validation per unit: loss per frame and unigram entropy of the targets.
    pub nca_stage1: Vec<NcaStage1>,
    /// Units that have not finished (the report covers the others).
    pub missing: Vec<String>,
    pub times: Times,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// The report of the experiment `record` describes from its finished units: `finished` in the order
/// of `units::plan`, beside the names of the units still missing.
pub fn build_report(
    record: &Record,
    finished: &[(Unit, UnitResult)],
    missing: Vec<String>,
) -> Result<Report> {
    let set = &record.settings;
    let results: Vec<&ArmResult> = finished.iter().map(|(_, r)| &r.result).collect();
    let scratch = |seed: u64| results.iter().find(|r| r.arm == Arm::Scratch && r.seed == seed);
    let stage2_tokens = record.budgets.stage2_tokens;
    let mut arms = Vec::new();
    let mut arm_keys: Vec<(Arm, Option<Band>)> = Vec::new();
    for u in units::plan(&set.arms, &set.bands, &set.seeds).iter().filter(|u| u.arm != Arm::Scratch) {
        if !arm_keys.contains(&(u.arm, u.band)) {
            arm_keys.push((u.arm, u.band));
        }
    }
    for (arm, band) in arm_keys {
        let paired: Vec<Paired> = results
            .iter()
            .filter(|r| r.arm == arm && r.band == band)
            .filter_map(|r| Some((r, scratch(r.seed)?)))
            .map(|(r, s)| {
                let (pa, ps) = (r.final_perplexity(), s.final_perplexity());
                let scratch_tokens = tokens_to_reach(&s.curve, ps);
                let arm_tokens = tokens_to_reach(&r.curve, ps);
                let speedup = match (scratch_tokens, arm_tokens) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                let scratch_reached_arm_at = if arm_tokens.is_none() {
                    tokens_to_reach(&s.curve, pa).map(|t| t / stage2_tokens as f64)
                } else {
                    None
                };
                Paired {
                    seed: r.seed,
                    perplexity: pa,
                    scratch: ps,
                    difference_pct: 100.0 * (pa - ps) / ps,
                    speedup,
                    scratch_reached_arm_at,
                }
            })
            .collect();
        if paired.is_empty() {
            continue;
        }
        let diffs: Vec<f64> = paired.iter().map(|p| p.difference_pct).collect();
        let (mean, std) = mean_std(&diffs);
        let speedups: Vec<f64> = paired.iter().filter_map(|p| p.speedup).collect();
        let (speed_mean, speed_std) = mean_std(&speedups);
        arms.push(ArmSummary {
            arm,
            band,
            wins: paired.iter().filter(|p| p.difference_pct < 0.0).count(),
            mean_difference_pct: mean,
            std_difference_pct: std,
            mean_speedup: (!speedups.is_empty()).then_some(speed_mean),
            std_speedup: (!speedups.is_empty()).then_some(speed_std),
            paired,
        });
    }
    let mut band_ranking: Vec<ArmSummary> = arms.iter().filter(|a| a.band.is_some()).cloned().collect();
    band_ranking.sort_by(|a, b| {
        a.mean_difference_pct
            .total_cmp(&b.mean_difference_pct)
            .then(b.mean_speedup.unwrap_or(0.0).total_cmp(&a.mean_speedup.unwrap_or(0.0)))
    });
    let mut devices: Vec<String> = Vec::new();
    for (_, r) in finished {
        if !devices.contains(&r.device) {
            devices.push(r.device.clone());
        }
    }
    let probe = record.probe;
    let predicted = |u: &Unit| probe.unit_seconds(&record.budgets, u.arm != Arm::Scratch);
    let all = units::plan(&set.arms, &set.bands, &set.seeds);
    Ok(Report {
        preset: set.preset_name.clone(),
        model: ModelConfig { vocab_size: record.corpus_vocab, ..set.preset.model.clone() }.describe(),
        device: devices.join("; "),
        corpus: record.corpus_label.clone(),
        seeds: set.seeds.clone(),
        stage1_tokens: record.budgets.stage1_tokens,
        stage2_tokens,
        embed_std: set.embed_std,
        demonstration: set.demonstration,
        scratch_final: results
            .iter()
            .filter(|r| r.arm == Arm::Scratch)
            .map(|r| (r.seed, r.final_perplexity()))
            .collect(),
        arms,
        band_ranking,
        nca_stage1: finished
            .iter()
            .filter_map(|(u, r)| Some(NcaStage1 { band: u.band, seed: u.seed, eval: r.nca_stage1.clone()? }))
            .collect(),
        missing,
        times: Times {
            probe,
            predicted_run_s: all.iter().map(predicted).sum(),
            units: finished
                .iter()
                .map(|(u, r)| UnitTime {
                    unit: u.name(),
                    stage1: r.stage1_time,
                    stage2: r.stage2_time,
                    predicted_s: predicted(u),
                })
                .collect(),
        },
    })
}

/// Reads every unit's result in `out`, then builds and writes the report of those that have finished.
pub fn from_dir(out: &Path, record: &Record) -> Result<(Report, Vec<ArmResult>)> {
    let set = &record.settings;
    let mut finished = Vec::new();
    let mut missing = Vec::new();
    for unit in units::plan(&set.arms, &set.bands, &set.seeds) {
        match units::read_result(out, &unit)? {
            Some(r) => finished.push((unit, r)),
            None => missing.push(unit.name()),
        }
    }
    if finished.is_empty() {
        bail!("no unit of the experiment in {} has finished yet ({} missing)", out.display(), missing.len());
    }
    let report = build_report(record, &finished, missing)?;
    let results: Vec<ArmResult> = finished.into_iter().map(|(_, r)| r.result).collect();
    write(out, &report, &results)?;
    Ok((report, results))
}

impl Report {
    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| arm | final val perplexity (per seed) | vs scratch (mean ± sd) | wins | speed-up |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|");
        let scratch: Vec<String> = self.scratch_final.iter().map(|(_, p)| format!("{p:.3}")).collect();
        let _ = writeln!(s, "| scratch | {} | | | |", scratch.join(", "));
        for a in &self.arms {
            let finals: Vec<String> = a.paired.iter().map(|p| format!("{:.3}", p.perplexity)).collect();
            let speed = a.mean_speedup.map_or_else(
                || {
                    let fr: Vec<String> = a
                        .paired
                        .iter()
                        .filter_map(|p| p.scratch_reached_arm_at)
                        .map(|f| format!("{:.0}%", 100.0 * f))
                        .collect();
                    if fr.is_empty() {
                        "n/a".into()
                    } else {
                        format!(
                            "never reached scratch; scratch reached it at {} of the budget",
                            fr.join(", ")
                        )
                    }
                },
                |v| format!("{v:.2}x"),
            );
            let _ = writeln!(
                s,
                "| {} | {} | {:+.2}% ± {:.2} | {}/{} | {speed} |",
                a.label(),
                finals.join(", "),
                a.mean_difference_pct,
                a.std_difference_pct,
                a.wins,
                a.paired.len()
            );
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# NCA pre-pre-training vs scratch\n");
        if self.demonstration {
            let _ = writeln!(
                s,
                "> **A demonstration of the pipeline, not a measurement.** This ran on a CPU device with budgets \
                 far too small to show the effect: the paper's 164M NCA tokens and billions of text tokens, or \
                 at least tens of millions of each at small scale with 3 or more paired seeds, are needed.\n"
            );
        }
        let _ = writeln!(s, "- preset: `{}`; device: {}", self.preset, self.device);
        let _ = writeln!(s, "- model: {}", self.model);
        let _ = writeln!(s, "- stage-2 corpus: {}", self.corpus);
        let _ = writeln!(
            s,
            "- stage-1 budget: {} tokens per arm; stage-2 budget: {} tokens per arm",
            self.stage1_tokens, self.stage2_tokens
        );
        let _ = writeln!(
            s,
            "- stage-2 embedding N(0, {}) and head uniform ±1/sqrt(d), identical for every arm of a seed (at small scale this init changes the verdict)",
            self.embed_std
        );
        let _ = writeln!(s, "- paired seeds: {:?} (each seed: the same stage-2 data order and initialisation for every arm)\n", self.seeds);
        if !self.missing.is_empty() {
            let _ = writeln!(
                s,
                "## Missing units\n\nThis report covers the finished units only. Not finished yet: {}. Run them (the \
                 same command, or its `--task I/N` share) and rebuild the report with `ncalm experiment report DIR`.\n",
                self.missing.join(", ")
            );
        }
        let _ = writeln!(s, "## Final validation perplexity\n\n{}", self.table());
        let _ = writeln!(
            s,
            "Speed-up: tokens scratch needs to reach its final perplexity over the tokens the arm needs to reach it \
             (linear interpolation on the validation curve), averaged over seeds.\n"
        );
        if !self.band_ranking.is_empty() {
            let _ = writeln!(
                s,
                "## Complexity bands\n\nThe NCA arm of each gzip band, best first: by the mean paired perplexity \
                 difference against scratch, then by speed-up (mean ± sd over seeds).\n\n\
                 | rank | band | vs scratch (mean ± sd) | wins | speed-up (mean ± sd) |\n|---|---|---|---|---|"
            );
            for (i, a) in self.band_ranking.iter().enumerate() {
                let speed = match (a.mean_speedup, a.std_speedup) {
                    (Some(m), Some(sd)) => format!("{m:.2}x ± {sd:.2}"),
                    _ => "n/a".into(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {:+.2}% ± {:.2} | {}/{} | {speed} |",
                    i + 1,
                    a.band.map(String::from).unwrap_or_default(),
                    a.mean_difference_pct,
                    a.std_difference_pct,
                    a.wins,
                    a.paired.len()
                );
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "## Per seed\n\n| arm | seed | perplexity | scratch | difference | speed-up |\n|---|---|---|---|---|---|");
        for a in &self.arms {
            for p in &a.paired {
                let speed = p.speedup.map_or_else(
                    || {
                        p.scratch_reached_arm_at.map_or("n/a".into(), |f| {
                            format!("never; scratch got there at {:.0}%", 100.0 * f)
                        })
                    },
                    |v| format!("{v:.2}x"),
                );
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {:.3} | {:+.2}% | {speed} |",
                    a.label(),
                    p.seed,
                    p.perplexity,
                    p.scratch,
                    p.difference_pct
                );
            }
        }
        if !self.nca_stage1.is_empty() {
            let _ = writeln!(s, "\n## What the NCA stage learned\n");
            let _ = writeln!(
                s,
                "Validation loss per frame of held-out rules at the end of stage 1. It falls with the frame index only when \
                 the model infers each sequence's rule in context; a model that learned only token frequencies has a flat \
                 curve near the unigram entropy.\n"
            );
            let _ = writeln!(s, "| arm | seed | val loss | unigram entropy | cell accuracy | frame 2 | middle frame | last frame |\n|---|---|---|---|---|---|---|---|");
            for row in &self.nca_stage1 {
                let (e, f) = (&row.eval, &row.eval.val_frame_loss);
                let at = |i: usize| f.get(i).map_or("-".into(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {:.3} | {} | {} | {} | {} |",
                    arm_label(Arm::Nca, row.band),
                    row.seed,
                    e.val_loss,
                    e.val_unigram_entropy,
                    e.val_cell_accuracy.map_or("-".into(), |a| format!("{:.1}%", 100.0 * a)),
                    at(0),
                    at(f.len() / 2),
                    at(f.len().saturating_sub(1))
                );
            }
        }
        let _ = writeln!(s, "\n![validation perplexity against stage-2 tokens](curves.png)");
        s += &self.times_markdown();
        s
    }

    /// The last section: what each unit took, against the prediction. Measured times differ from run
    /// to run, so they come last and nothing above depends on them.
    fn times_markdown(&self) -> String {
        let t = &self.times;
        let mut s = format!(
            "\n{TIME_HEADING}\n\nMeasured wall time per stage, in the invocation that finished it (a stage resumed \
             from a checkpoint counts only the steps it ran then), against the prediction from timed steps \
             (stage 1 {:.1} ms/step, stage 2 {:.1} ms/step). Predicted for the whole run: {}.\n\n\
             | unit | stage 1 | stage 2 | total | predicted |\n|---|---|---|---|---|\n",
            1e3 * t.probe.stage1.map_or(f64::NAN, |c| c.step_s),
            1e3 * t.probe.stage2.step_s,
            format_seconds(t.predicted_run_s)
        );
        let cell = |st: &Option<StageTime>| match st {
            Some(x) => format!("{} ({} steps)", format_seconds(x.seconds), x.steps),
            None => "-".into(),
        };
        let mut total = 0.0;
        for u in &t.units {
            let sum = u.stage1.map_or(0.0, |x| x.seconds) + u.stage2.map_or(0.0, |x| x.seconds);
            total += sum;
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                u.unit,
                cell(&u.stage1),
                cell(&u.stage2),
                format_seconds(sum),
                format_seconds(u.predicted_s)
            );
        }
        let _ = writeln!(s, "\nThe finished units took {} in all.", format_seconds(total));
        s
    }
}

/// The heading of the report's section of measured times, the one part that differs between runs.
pub const TIME_HEADING: &str = "## Wall time";

/// Mean curve of an arm over seeds (evaluations happen at the same token counts in every run).
fn mean_curve(results: &[ArmResult], label: &str) -> Vec<(f64, f64)> {
    let runs: Vec<&ArmResult> = results.iter().filter(|r| r.label() == label).collect();
    let len = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    (0..len)
        .map(|i| (runs[0].curve[i].0, runs.iter().map(|r| r.curve[i].1).sum::<f64>() / runs.len() as f64))
        .collect()
}

pub fn curves_picture(report: &Report, results: &[ArmResult]) -> Canvas {
    let mut chart =
        Chart::line("validation perplexity (mean over seeds)", "stage-2 tokens", "perplexity").log_y();
    let mut labels: Vec<String> = Vec::new();
    for r in results {
        if !labels.contains(&r.label()) {
            labels.push(r.label());
        }
    }
    for label in labels {
        let curve = mean_curve(results, &label);
        chart = chart.with_series(label, curve);
    }
    let _ = report;
    crate::plot::render(&chart, 900, 560)
}

pub fn write(out: &Path, report: &Report, results: &[ArmResult]) -> Result<()> {
    let [md, json, png] = report_paths(out);
    write_atomic(&md, report.markdown().as_bytes())?;
    let value = serde_json::json!({ "report": report, "curves": results });
    write_atomic(&json, (serde_json::to_string_pretty(&value)? + "\n").as_bytes())?;
    curves_picture(report, results).save_png(&png)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_to_reach_interpolates() {
        let curve = [(100.0, 10.0), (200.0, 8.0), (300.0, 6.0)];
        assert_eq!(tokens_to_reach(&curve, 6.0), Some(300.0));
        assert_eq!(tokens_to_reach(&curve, 7.0), Some(250.0));
        assert_eq!(tokens_to_reach(&curve, 12.0), Some(100.0));
        assert_eq!(tokens_to_reach(&curve, 5.0), None);
    }
}
