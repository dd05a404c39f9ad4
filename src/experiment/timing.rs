//! Sizing an experiment by time: what a stage costs (measured on a few timed steps), the predicted wall
//! time of a unit and of the whole run, and token budgets that fit a time budget.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

use super::record::Budgets;

/// Optimiser steps each probe times; the first compiles the kernels and counts as set-up.
pub const PROBE_STEPS: u64 = 4;
/// Stage 2 evaluates at ten points, so it runs at least ten steps.
pub const MIN_STAGE2_STEPS: u64 = 10;

/// What one stage costs on this device: seconds of set-up (data, rule search, the model, the first
/// step's kernel compilation, the final checkpoint), of each further step, and of each evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    pub setup_s: f64,
    pub step_s: f64,
    pub eval_s: f64,
}

impl StageCost {
    pub fn seconds(&self, steps: u64, evals: u64) -> f64 {
        self.setup_s + steps as f64 * self.step_s + evals as f64 * self.eval_s
    }

    /// The cost of a probe that took `total_s` seconds: steps that took `step_ms` each (as its metrics
    /// logged them, evaluations and checkpoints left out) and `evals` evaluations that took `eval_s` in all.
    pub fn from_probe(total_s: f64, step_ms: &[f64], evals: usize, eval_s: f64) -> Result<Self> {
        ensure!(step_ms.len() >= 2, "the probe logged {} steps, too few to time", step_ms.len());
        ensure!(evals >= 1, "the probe made no evaluation to time");
        let mut later: Vec<f64> = step_ms[1..].iter().map(|ms| ms / 1e3).collect();
        later.sort_by(f64::total_cmp);
        let step_s = later[later.len() / 2];
        // The first step's excess over the others is kernel compilation: a cost of the set-up.
        let steps_s = step_s * step_ms.len() as f64;
        Ok(Self { setup_s: (total_s - steps_s - eval_s).max(0.0), step_s, eval_s: eval_s / evals as f64 })
    }
}

/// The measured costs of stage 1 (absent when every arm is scratch) and stage 2.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub stage1: Option<StageCost>,
    pub stage2: StageCost,
}

/// Stage 2's evaluations: every tenth of the run and at its end.
pub fn stage2_eval_every(steps: u64) -> u64 {
    (steps / 10).max(1)
}

fn stage2_evals(steps: u64) -> u64 {
    steps.div_ceil(stage2_eval_every(steps))
}

impl Probe {
    /// Predicted seconds of one unit, with a stage 1 or without (scratch).
    pub fn unit_seconds(&self, budgets: &Budgets, stage1: bool) -> f64 {
        let one = match (stage1, &self.stage1) {
            (true, Some(c)) => c.seconds(budgets.stage1_steps, 1),
            _ => 0.0,
        };
        one + self.stage2.seconds(budgets.stage2_steps, stage2_evals(budgets.stage2_steps))
    }

    /// Predicted seconds of units of which `with_stage1` have a stage 1, one after the other.
    pub fn run_seconds(&self, budgets: &Budgets, units: usize, with_stage1: usize) -> f64 {
        with_stage1 as f64 * self.unit_seconds(budgets, true)
            + (units - with_stage1) as f64 * self.unit_seconds(budgets, false)
    }
}

/// Tokens per optimiser step of each stage.
#[derive(Clone, Copy, Debug)]
pub struct StepTokens {
    pub stage1: u64,
    pub stage2: u64,
}

impl StepTokens {
    /// Budgets of whole steps covering the asked-for tokens.
    pub fn budgets(&self, stage1_steps: u64, stage2_steps: u64) -> Budgets {
        Budgets {
            stage1_steps,
            stage2_steps,
            stage1_tokens: stage1_steps * self.stage1,
            stage2_tokens: stage2_steps * self.stage2,
        }
    }

    pub fn for_tokens(&self, stage1_tokens: u64, stage2_tokens: u64) -> Budgets {
        self.budgets(stage1_tokens.div_ceil(self.stage1), stage2_tokens.div_ceil(self.stage2))
    }
}

/// The largest budgets, in the ratio `stage1_tokens : stage2_tokens`, whose units fit `seconds` on the
/// device `probe` measured.
pub fn budgets_for_time(
    probe: &Probe,
    per_step: StepTokens,
    ratio: (u64, u64),
    units: usize,
    with_stage1: usize,
    seconds: f64,
) -> Result<Budgets> {
    let at = |stage2_steps: u64| {
        let stage1_tokens = (ratio.0 as f64 / ratio.1 as f64) * (stage2_steps * per_step.stage2) as f64;
        let stage1_steps = ((stage1_tokens / per_step.stage1 as f64).round() as u64).max(1);
        per_step.budgets(stage1_steps, stage2_steps)
    };
    let fits = |n: u64| probe.run_seconds(&at(n), units, with_stage1) <= seconds;
    if !fits(MIN_STAGE2_STEPS) {
        bail!(
            "--time-budget {} is too short: the smallest experiment ({MIN_STAGE2_STEPS} stage-2 steps per unit) \
             needs about {} on this device",
            format_seconds(seconds.max(0.0)),
            format_seconds(probe.run_seconds(&at(MIN_STAGE2_STEPS), units, with_stage1))
        );
    }
    let (mut lo, mut hi) = (MIN_STAGE2_STEPS, MIN_STAGE2_STEPS * 2);
    while fits(hi) && hi < 1 << 40 {
        (lo, hi) = (hi, hi * 2);
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(at(lo))
}

/// Parses a duration such as `300`, `90s`, `5m`, `1h30m` or `1.5h` into seconds.
pub fn parse_duration(text: &str) -> Result<f64> {
    let bad = || format!("a duration is written like 90s, 5m, 1h30m or 300 (seconds), got {text:?}");
    let mut total = 0.0;
    let mut rest = text.trim();
    ensure!(!rest.is_empty(), "{}", bad());
    if let Ok(seconds) = rest.parse::<f64>() {
        (total, rest) = (seconds, "");
    }
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let value: f64 = number.parse().ok().with_context(bad)?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let scale = match unit {
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => bail!("{}", bad()),
        };
        total += value * scale;
        rest = next;
    }
    ensure!(total.is_finite() && total > 0.0, "{}", bad());
    Ok(total)
}

/// Seconds as a person reads them: `42 s`, `4 min 05 s`, `2 h 10 min`.
pub fn format_seconds(s: f64) -> String {
    let whole = s.round() as u64;
    match whole {
        0..60 => format!("{s:.0} s"),
        60..3600 => format!("{} min {:02} s", whole / 60, whole % 60),
        _ => format!("{} h {:02} min", whole / 3600, (whole % 3600) / 60),
    }
}

/// Milliseconds per step of every step `run_dir`'s metrics logged, in order.
pub fn logged_step_ms(run_dir: &Path) -> Result<Vec<f64>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("ms_per_step").and_then(serde_json::Value::as_f64))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("300").unwrap(), 300.0);
        assert_eq!(parse_duration("90s").unwrap(), 90.0);
        assert_eq!(parse_duration("5m").unwrap(), 300.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("1.5h").unwrap(), 5400.0);
        for bad in ["", "5x", "m", "-3s", "0", "1h 5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_seconds(42.4), "42 s");
        assert_eq!(format_seconds(245.0), "4 min 05 s");
        assert_eq!(format_seconds(7800.0), "2 h 10 min");
    }

    #[test]
    fn a_probe_splits_set_up_steps_and_evaluation() {
        // 1 s of set-up, a first step of 0.5 s (compilation), then 0.1 s per step, and two evaluations
        // of 0.05 s.
        let steps = [500.0, 100.0, 100.0, 100.0, 100.0];
        let c = StageCost::from_probe(1.0 + 0.5 + 0.4 + 0.1, &steps, 2, 0.1).unwrap();
        assert!((c.step_s - 0.1).abs() < 1e-12 && (c.eval_s - 0.05).abs() < 1e-12, "{c:?}");
        assert!((c.setup_s - 1.4).abs() < 1e-9, "{c:?}");
        assert!((c.seconds(10, 2) - (1.4 + 1.0 + 0.1)).abs() < 1e-9);
    }

    #[test]
    fn time_budgets_keep_the_ratio_and_fit() {
        let cost = StageCost { setup_s: 2.0, step_s: 0.1, eval_s: 0.0 };
        let probe = Probe { stage1: Some(cost), stage2: cost };
        let per_step = StepTokens { stage1: 256, stage2: 256 };
        // 3 units, 2 with a stage 1 half as long as stage 2: 10 s of set-up and 0.4 s per stage-2 step.
        let b = budgets_for_time(&probe, per_step, (1, 2), 3, 2, 60.0).unwrap();
        assert_eq!((b.stage1_steps, b.stage2_steps), (62, 124));
        assert!(probe.run_seconds(&b, 3, 2) <= 60.0);
        let err = budgets_for_time(&probe, per_step, (1, 2), 3, 2, 12.0).unwrap_err().to_string();
        assert!(err.contains("too short") && err.contains("needs about 14 s"), "{err}");
    }
}
