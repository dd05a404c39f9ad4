//! What a run reports: the step and evaluation records of `metrics.jsonl`, the log lines above the
//! progress bar, the loss curves in `curves.png`, and the throughput and MFU estimate.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::run::StepRecord;
use crate::ops::loss_scale::ScaleState;
use crate::plot::{render_grid, Chart};
use crate::util::write_atomic;

/// The metrics file of a run directory.
const METRICS_FILE: &str = "metrics.jsonl";

#[derive(Clone, Debug, Serialize)]
pub struct StepLog {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub mfu: Option<f64>,
    /// Half precision: the loss scale after this step, and the steps skipped so far because their
    /// gradients overflowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
    /// Several ranks: milliseconds per step spent summing gradients over them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_reduce_ms: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalLog {
    pub step: u64,
    /// Training tokens seen when the evaluation ran.
    pub tokens: u64,
    pub val_loss: f64,
    pub val_perplexity: f64,
    /// NCA data: share of next-frame cells predicted exactly by the greedy (argmax) token.
    pub val_cell_accuracy: Option<f64>,
    /// NCA data: mean validation loss of the targets in frame 2, 3, ... (1-based; frame 1's targets
    /// are masked).
    pub val_frame_loss: Vec<f64>,
    /// Entropy (nats) of the validation targets' token frequencies: the loss of a model that learned
    /// only frequencies.
    pub val_unigram_entropy: f64,
}

/// Known FP32 (non-tensor-core) peaks, for MFU when the user gives none.
pub fn known_peak_flops(adapter: &str) -> Option<f64> {
    let name = adapter.to_lowercase();
    let table: &[(&str, f64)] = &[
        ("h200", 67e12),
        ("h100 pcie", 51e12),
        ("h100", 67e12),
        ("a100", 19.5e12),
        ("l40s", 91.6e12),
        ("l4", 30.3e12),
        ("a10", 31.2e12),
        ("rtx 4090", 82.6e12),
        ("rtx 3090", 35.6e12),
    ];
    table.iter().find(|(k, _)| name.contains(k)).map(|(_, v)| *v)
}

/// Starts the metrics file of `run_dir`: empty for a new run; a resumed run keeps the lines of steps up
/// to `resumed_at` and continues the file from there.
pub(super) fn start_metrics(run_dir: &Path, resumed_at: Option<u64>) -> Result<()> {
    let path = &run_dir.join(METRICS_FILE);
    match resumed_at {
        Some(step) => truncate_metrics(path, step),
        None => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
    }
}

/// Keeps only the metric lines of steps up to `step`.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

/// Every evaluation `run_dir`'s metrics file records, in order (a resumed run's included).
pub fn evaluations(run_dir: &Path) -> Result<Vec<EvalLog>> {
    let path = run_dir.join(METRICS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .filter(|l| l.contains("\"val_loss\""))
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("{}: a damaged evaluation line", path.display()))
        })
        .collect()
}

fn append_jsonl(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(value)?).with_context(|| format!("writing {}", path.display()))
}

fn write_curves(run_dir: &Path, losses: &[(f64, f64)], eval: Option<&EvalLog>) -> Result<()> {
    let train = Chart::line("training loss", "step", "loss (nats)").with_series("train", losses.to_vec());
    let frames = Chart::line(
        eval.map_or("validation loss per frame".to_string(), |e| {
            format!("validation loss per frame (step {})", e.step)
        }),
        "frame index",
        "loss (nats)",
    )
    .with_series(
        "val",
        eval.map(|e| e.val_frame_loss.iter().enumerate().map(|(i, &l)| ((i + 2) as f64, l)).collect())
            .unwrap_or_default(),
    );
    render_grid(&[train, frames], 2, 800, 500).save_png(&run_dir.join("curves.png"))
}

/// The reporting side of the loop: the progress bar and the lines above it, the metrics file and the
/// curves, and the clock of the current logging window (the steps since the last logging point). Of
/// several ranks, only rank 0 reports; the others keep the clock and write nothing.
pub(super) struct Progress {
    reports: bool,
    run_dir: PathBuf,
    metrics: PathBuf,
    bar: indicatif::ProgressBar,
    /// (steps done, loss) of every step logged by this invocation.
    curve: Vec<(f64, f64)>,
    /// The first step of the current logging window.
    pub(super) window_start: u64,
    window_time: Instant,
    /// Several ranks: the all-reduce time up to the start of the window.
    window_all_reduce: Option<Duration>,
    tokens_per_step: u64,
    flops_per_token: f64,
    peak_flops: Option<f64>,
}

impl Progress {
    /// Reports the steps `start..stop` into `run_dir`, if `reports`.
    pub(super) fn new(
        run_dir: &Path,
        (start, stop): (u64, u64),
        tokens_per_step: u64,
        flops_per_token: f64,
        peak_flops: Option<f64>,
        reports: bool,
    ) -> Self {
        let bar = if reports {
            indicatif::ProgressBar::new(stop - start)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} eta {eta}")
                .expect("valid template"),
        );
        Self {
            reports,
            window_all_reduce: None,
            run_dir: run_dir.to_path_buf(),
            metrics: run_dir.join(METRICS_FILE),
            bar,
            curve: Vec::new(),
            window_start: start,
            window_time: Instant::now(),
            tokens_per_step,
            flops_per_token,
            peak_flops,
        }
    }

    /// A log line above the progress bar, or on standard error when there is no bar (not a terminal).
    pub(super) fn say(&self, line: String) {
        if !self.reports {
            return;
        }
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// Closes the logging window that ends at `done` steps (`history` holds its steps, `lr` is the
    /// last one's learning rate, `all_reduce` the all-reduce time so far with several ranks): records
    /// it, logs it and starts the next window. Returns its last loss.
    pub(super) fn log_steps(
        &mut self,
        history: &[StepRecord],
        scale: Option<ScaleState>,
        (done, tokens): (u64, u64),
        lr: f64,
        all_reduce: Option<Duration>,
    ) -> Result<f64> {
        let secs = self.window_time.elapsed().as_secs_f64();
        let steps = (done - self.window_start) as f64;
        let all_reduce_ms = all_reduce.map(|total| {
            let before = self.window_all_reduce.replace(total).unwrap_or_default();
            (total - before).as_secs_f64() * 1e3 / steps
        });
        let loss = history.last().expect("a non-empty window").loss;
        // The norm of the window's last step that was taken (null in the log if none was).
        let grad_norm = history.iter().rev().find(|h| !h.skipped).map_or(f64::NAN, |h| h.grad_norm);
        let tokens_per_s = steps * self.tokens_per_step as f64 / secs;
        let entry = StepLog {
            step: done,
            tokens,
            loss,
            grad_norm,
            lr,
            ms_per_step: secs * 1e3 / steps,
            tokens_per_s,
            mfu: self.peak_flops.map(|p| self.flops_per_token * tokens_per_s / p),
            loss_scale: scale.map(|s| f64::from(s.scale)),
            skipped_steps: scale.map(|s| u64::from(s.skipped)),
            all_reduce_ms,
        };
        self.window_start = done;
        self.window_time = Instant::now();
        if !self.reports {
            return Ok(loss);
        }
        self.curve.extend(history.iter().map(|h| ((h.step + 1) as f64, h.loss)));
        append_jsonl(&self.metrics, &entry)?;
        let mfu = entry.mfu.map_or("n/a".to_string(), |m| format!("{:.1}%", 100.0 * m));
        let scaling = scale.map_or(String::new(), |s| {
            let scale = if s.scale < 1e7 { format!("{}", s.scale) } else { format!("{:.2e}", s.scale) };
            format!(" | loss scale {scale} ({} steps skipped)", s.skipped)
        });
        let sharing = all_reduce_ms.map_or(String::new(), |ms| {
            format!(" | all-reduce {ms:.1} ms ({:.0}%)", 100.0 * ms / entry.ms_per_step)
        });
        self.say(format!(
            "step {done:>6} | loss {loss:.4} | grad norm {grad_norm:.3} | lr {:.2e} | {:.1} ms | {:.0} tok/s | MFU {mfu}{scaling}{sharing}",
            entry.lr, entry.ms_per_step, tokens_per_s
        ));
        self.bar.set_message(format!("loss {loss:.4}"));
        Ok(loss)
    }

    /// Records and logs an evaluation and redraws the curves with its frame losses.
    pub(super) fn log_eval(&mut self, e: &EvalLog) -> Result<()> {
        append_jsonl(&self.metrics, e)?;
        let frames = &e.val_frame_loss;
        let detail = match e.val_cell_accuracy {
            Some(acc) => format!(
                " | cell accuracy {:.2}% | frame loss {:.3} (frame 2) .. {:.3} (frame {})",
                100.0 * acc,
                frames.first().copied().unwrap_or(f64::NAN),
                frames.last().copied().unwrap_or(f64::NAN),
                frames.len() + 1
            ),
            None => format!(" | val perplexity {:.3}", e.val_perplexity),
        };
        self.say(format!("eval {:>6} | val loss {:.4}{detail}", e.step, e.val_loss));
        write_curves(&self.run_dir, &self.curve, Some(e))?;
        self.restart_clock();
        Ok(())
    }

    /// Logs a saved checkpoint.
    pub(super) fn log_checkpoint(&mut self, path: &Path) {
        self.say(format!("saved {}", path.display()));
        self.restart_clock();
    }

    /// Evaluations and checkpoints do not count towards the steps' time.
    fn restart_clock(&mut self) {
        self.window_time = Instant::now();
    }

    pub(super) fn step_done(&self) {
        self.bar.inc(1);
    }

    pub(super) fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Leaves the bar as it is and says why the run stops, and that `last_checkpoint` is intact.
    pub(super) fn diverged(&self, why: &str, last_checkpoint: &Path) -> anyhow::Error {
        self.bar.abandon();
        anyhow!("{why}. The last good checkpoint ({}) is intact.", last_checkpoint.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_are_known_for_common_gpus() {
        assert_eq!(known_peak_flops("NVIDIA H100 80GB HBM3"), Some(67e12));
        assert_eq!(known_peak_flops("llvmpipe (LLVM 15.0.6, 256 bits)"), None);
    }
}
