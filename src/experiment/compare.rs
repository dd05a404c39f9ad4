//! Architectures compared at equal training FLOPs: each experiment's stage-2 validation perplexity
//! (mean over seeds) against the FLOPs spent so far, stage 1 included, as one picture and one table.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{ensure, Result};

use super::report::ArmResult;
use super::Arm;
use crate::plot::Chart;
use crate::util::write_atomic;

/// One curve of the comparison: an architecture's arm, perplexity against cumulative training FLOPs.
#[derive(Clone, Debug)]
pub struct FlopsCurve {
    pub label: String,
    pub arm: Arm,
    pub stage1_flops: f64,
    pub flops_per_token: f64,
    pub points: Vec<(f64, f64)>,
}

/// The mean over seeds of `arm`'s runs, on a FLOPs axis: stage 1's FLOPs plus stage-2 tokens times
/// FLOPs per token.
pub fn flops_curve(label: &str, results: &[ArmResult], arm: Arm) -> Option<FlopsCurve> {
    let runs: Vec<&ArmResult> = results.iter().filter(|r| r.arm == arm).collect();
    let len = runs.iter().map(|r| r.curve.len()).min()?;
    if len == 0 {
        return None;
    }
    let mean = |f: &dyn Fn(&ArmResult) -> f64| runs.iter().map(|r| f(r)).sum::<f64>() / runs.len() as f64;
    let (stage1_flops, flops_per_token) = (mean(&|r| r.stage1_flops), mean(&|r| r.flops_per_token));
    let points = (0..len)
        .map(|i| {
            let tokens = runs[0].curve[i].0;
            (stage1_flops + tokens * flops_per_token, mean(&|r| r.curve[i].1))
        })
        .collect();
    Some(FlopsCurve { label: format!("{label} {}", arm.name()), arm, stage1_flops, flops_per_token, points })
}

/// A curve's value at `x` by linear interpolation; None outside the points' range.
pub fn value_at(points: &[(f64, f64)], x: f64) -> Option<f64> {
    let (first, last) = (points.first()?, points.last()?);
    if x < first.0 || x > last.0 {
        return None;
    }
    points.windows(2).find(|w| x <= w[1].0).map_or(Some(last.1), |w| {
        let t = if w[1].0 > w[0].0 { (x - w[0].0) / (w[1].0 - w[0].0) } else { 1.0 };
        Some(w[0].1 + t * (w[1].1 - w[0].1))
    })
}

/// Writes `architectures.md` and `architectures.png` into `out` for experiments given as (label,
/// stage-2 results); returns the markdown.
pub fn compare(out: &Path, experiments: &[(String, Vec<ArmResult>)]) -> Result<String> {
    let mut curves = Vec::new();
    for (label, results) in experiments {
        let mut arms: Vec<Arm> = results.iter().map(|r| r.arm).collect();
        arms.sort();
        arms.dedup();
        curves.extend(arms.into_iter().filter_map(|a| flops_curve(label, results, a)));
    }
    ensure!(curves.len() >= 2, "the comparison needs at least two curves with evaluations");
    // Per arm, the largest budget that every architecture's curve reaches: there each has spent the same
    // FLOPs on the same recipe.
    let budget = |arm: Arm| {
        curves
            .iter()
            .filter(|c| c.arm == arm)
            .map(|c| c.points.last().expect("non-empty").0)
            .fold(f64::INFINITY, f64::min)
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Architectures at equal training FLOPs\n");
    let _ = writeln!(
        md,
        "Validation perplexity of stage 2 (mean over seeds) against training FLOPs, stage 1's included \
         (6 N per token, plus attention's 12 L T d; docs/nca-lm.md). Curves of one arm are compared at the \
         largest budget that all of them reach.\n"
    );
    let _ = writeln!(
        md,
        "| curve | stage-1 FLOPs | stage-2 FLOPs/token | final perplexity | at FLOPs | equal-FLOPs budget | perplexity there |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
    for c in &curves {
        let (x, y) = *c.points.last().expect("non-empty");
        let b = budget(c.arm);
        let at = value_at(&c.points, b).map_or("-".into(), |v| format!("{v:.3}"));
        let _ = writeln!(
            md,
            "| {} | {:.3e} | {:.3e} | {y:.3} | {x:.3e} | {b:.3e} | {at} |",
            c.label, c.stage1_flops, c.flops_per_token
        );
    }
    let _ = writeln!(
        md,
        "\nA '-' means the curve's first evaluation comes after the budget (its stage 1 cost more than the \
         other architecture's whole run).\n\n![perplexity against FLOPs](architectures.png)"
    );
    let mut chart =
        Chart::line("validation perplexity against training FLOPs", "training FLOPs", "perplexity")
            .log_x()
            .log_y();
    for c in &curves {
        chart = chart.with_series(c.label.clone(), c.points.clone());
    }
    std::fs::create_dir_all(out)?;
    crate::plot::render(&chart, 900, 560).save_png(&out.join("architectures.png"))?;
    write_atomic(&out.join("architectures.md"), md.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(arm: Arm, seed: u64, stage1_flops: f64, curve: Vec<(f64, f64)>) -> ArmResult {
        ArmResult { arm, band: None, seed, curve, stage1_flops, flops_per_token: 10.0 }
    }

    #[test]
    fn curves_average_seeds_on_a_flops_axis_and_interpolate() {
        let results = vec![
            run(Arm::Nca, 1, 1000.0, vec![(100.0, 8.0), (200.0, 6.0)]),
            run(Arm::Nca, 2, 3000.0, vec![(100.0, 10.0), (200.0, 8.0)]),
        ];
        let c = flops_curve("nca", &results, Arm::Nca).unwrap();
        assert_eq!(c.label, "nca nca");
        assert_eq!(c.points, vec![(3000.0, 9.0), (4000.0, 7.0)]);
        assert_eq!(value_at(&c.points, 3500.0), Some(8.0));
        assert_eq!(value_at(&c.points, 2999.0), None);
        assert_eq!(value_at(&c.points, 4000.0), Some(7.0));
        assert!(flops_curve("nca", &results, Arm::Dyck).is_none());
    }

    #[test]
    fn arms_meet_at_their_common_budget() {
        let dir = tempfile::tempdir().unwrap();
        let b = vec![
            run(Arm::Scratch, 1, 0.0, vec![(100.0, 10.0), (300.0, 6.0)]),
            run(Arm::Nca, 1, 5000.0, vec![(100.0, 8.0), (200.0, 6.0)]),
        ];
        let a = vec![
            run(Arm::Scratch, 1, 0.0, vec![(100.0, 9.0), (200.0, 7.0)]),
            run(Arm::Nca, 1, 7000.0, vec![(100.0, 8.0), (200.0, 6.0)]),
        ];
        let md = compare(dir.path(), &[("transformer".into(), a), ("nca".into(), b)]).unwrap();
        // Scratch arms meet at 2000 FLOPs, where the NCA model is half-way between its evaluations.
        assert!(
            md.contains("| transformer scratch | 0.000e0 | 1.000e1 | 7.000 | 2.000e3 | 2.000e3 | 7.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| nca scratch | 0.000e0 | 1.000e1 | 6.000 | 3.000e3 | 2.000e3 | 8.000 |"),
            "{md}"
        );
        // The NCA arms meet at 7000 FLOPs, before the transformer's first evaluation.
        assert!(md.contains("| nca nca | 5.000e3 | 1.000e1 | 6.000 | 7.000e3 | 7.000e3 | 6.000 |"), "{md}");
        assert!(
            md.contains("| transformer nca | 7.000e3 | 1.000e1 | 6.000 | 9.000e3 | 7.000e3 | - |"),
            "{md}"
        );
        assert!(dir.path().join("architectures.png").exists());
    }
}
