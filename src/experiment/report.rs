//! The experiment's report: final perplexities, paired differences against scratch, wins, the
//! convergence speed-up of docs/method.md section 6, and the NCA stage's per-frame loss.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{report_paths, Arm, ExperimentConfig};
use crate::gpu::Gpu;
use crate::model::ModelConfig;
use crate::plot::{Canvas, Chart};
use crate::train::metrics::EvalLog;
use crate::util::write_atomic;

/// One stage-2 run's validation perplexity against stage-2 tokens, and what its training cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArmResult {
    pub arm: Arm,
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
    pub paired: Vec<Paired>,
    pub mean_difference_pct: f64,
    pub std_difference_pct: f64,
    pub wins: usize,
    pub mean_speedup: Option<f64>,
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
    /// The NCA stage's final validation per seed: loss per frame and unigram entropy of the targets.
    pub nca_stage1: Vec<(u64, EvalLog)>,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 { xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

#[allow(clippy::too_many_arguments)]
pub fn build_report(
    cfg: &ExperimentConfig,
    corpus: &str,
    gpu: &Gpu,
    results: &[ArmResult],
    nca_stage1: &[(u64, EvalLog)],
    stage1_tokens: u64,
    stage2_tokens: u64,
    stage2_vocab: u32,
) -> Result<Report> {
    let scratch = |seed: u64| {
        results.iter().find(|r| r.arm == Arm::Scratch && r.seed == seed).expect("scratch runs for every seed")
    };
    let mut arms = Vec::new();
    for &arm in cfg.arms.iter().filter(|a| **a != Arm::Scratch) {
        let paired: Vec<Paired> = results
            .iter()
            .filter(|r| r.arm == arm)
            .map(|r| {
                let s = scratch(r.seed);
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
        let diffs: Vec<f64> = paired.iter().map(|p| p.difference_pct).collect();
        let (mean, std) = mean_std(&diffs);
        let speedups: Vec<f64> = paired.iter().filter_map(|p| p.speedup).collect();
        arms.push(ArmSummary {
            arm,
            wins: paired.iter().filter(|p| p.difference_pct < 0.0).count(),
            mean_difference_pct: mean,
            std_difference_pct: std,
            mean_speedup: (!speedups.is_empty()).then(|| mean_std(&speedups).0),
            paired,
        });
    }
    Ok(Report {
        preset: cfg.preset_name.clone(),
        model: ModelConfig { vocab_size: stage2_vocab, ..cfg.preset.model.clone() }.describe(),
        device: gpu.describe(),
        corpus: corpus.to_string(),
        seeds: cfg.seeds.clone(),
        stage1_tokens,
        stage2_tokens,
        embed_std: cfg.embed_std,
        demonstration: cfg.demonstration,
        scratch_final: cfg.seeds.iter().map(|&s| (s, scratch(s).final_perplexity())).collect(),
        arms,
        nca_stage1: nca_stage1.to_vec(),
    })
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
                a.arm.name(),
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
        let _ = writeln!(s, "## Final validation perplexity\n\n{}", self.table());
        let _ = writeln!(
            s,
            "Speed-up: tokens scratch needs to reach its final perplexity over the tokens the arm needs to reach it \
             (linear interpolation on the validation curve), averaged over seeds.\n"
        );
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
                    a.arm.name(),
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
            let _ = writeln!(s, "| seed | val loss | unigram entropy | cell accuracy | frame 2 | middle frame | last frame |\n|---|---|---|---|---|---|---|");
            for (seed, e) in &self.nca_stage1 {
                let f = &e.val_frame_loss;
                let at = |i: usize| f.get(i).map_or("-".into(), |v| format!("{v:.3}"));
                let _ = writeln!(
                    s,
                    "| {seed} | {:.3} | {:.3} | {} | {} | {} | {} |",
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
        s
    }
}

/// Mean curve of an arm over seeds (evaluations happen at the same token counts in every run).
fn mean_curve(results: &[ArmResult], arm: Arm) -> Vec<(f64, f64)> {
    let runs: Vec<&ArmResult> = results.iter().filter(|r| r.arm == arm).collect();
    let len = runs.iter().map(|r| r.curve.len()).min().unwrap_or(0);
    (0..len)
        .map(|i| (runs[0].curve[i].0, runs.iter().map(|r| r.curve[i].1).sum::<f64>() / runs.len() as f64))
        .collect()
}

pub fn curves_picture(report: &Report, results: &[ArmResult]) -> Canvas {
    let mut chart =
        Chart::line("validation perplexity (mean over seeds)", "stage-2 tokens", "perplexity").log_y();
    let mut arms: Vec<Arm> = results.iter().map(|r| r.arm).collect();
    arms.sort();
    arms.dedup();
    for arm in arms {
        chart = chart.with_series(arm.name(), mean_curve(results, arm));
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
