//! Stage-1 training end to end on the tiny preset: the loss falls, a resumed run continues the
//! uninterrupted curve exactly (recomputing layers or not), token files work as a data source, and a diverging run stops with a
//! message that names the step and the tensor while its last checkpoint stays loadable.

mod common;

use common::{ncalm, ok};
use std::path::Path;
use std::process::Command;

const TINY: &[&str] = &[
    "--preset",
    "tiny",
    "--set",
    "train.log_every=2",
    "--set",
    "train.eval_every=6",
    "--set",
    "train.checkpoint_every=6",
];

fn train(run: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "--stage", "nca", "--out", run.to_str().unwrap()];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    ok(&args)
}

#[test]
fn loss_falls_and_resume_continues_the_same_curve() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    let log = train(&whole, &["--steps", "12"]);
    assert!(log.contains("step     12 | loss") && log.contains("tok/s") && log.contains("MFU"), "{log}");
    let full = common::logged_steps(&whole);
    assert_eq!(full.len(), 6);
    assert!(full[5].1 < full[0].1 - 0.1, "loss did not fall: {full:?}");
    assert!(
        whole.join("checkpoint-00000012/model.safetensors").exists() && whole.join("curves.png").exists()
    );

    // A new run into a run directory is refused rather than mixed with the old one.
    let mut again = vec!["train", "--out", whole.to_str().unwrap(), "--steps", "2"];
    again.extend_from_slice(TINY);
    let out = ncalm(&again);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a run"));

    let split = tmp.path().join("split");
    train(&split, &["--steps", "6"]);
    ok(&["train", "--resume", split.to_str().unwrap(), "--steps", "12"]);
    let resumed = common::logged_steps(&split);
    assert_eq!(resumed.len(), full.len(), "{resumed:?}");
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a, b, "the resumed run left the uninterrupted curve");
    }
    // Recomputing layers changes memory, not results: a run that recomputes, resumed without
    // recomputing (a memory knob may change on resume), draws the same curve.
    let recomputed = tmp.path().join("recomputed");
    train(&recomputed, &["--steps", "6", "--set", "train.recompute=layer"]);
    let mut args = vec!["train", "--resume", recomputed.to_str().unwrap(), "--steps", "12"];
    args.extend_from_slice(TINY);
    ok(&args);
    assert_eq!(common::logged_steps(&recomputed), full, "recomputing layers changed the curve");
    // A resume whose settings differ is refused with the difference named.
    let mut args =
        vec!["train", "--resume", split.to_str().unwrap(), "--steps", "14", "--set", "train.lr=0.5"];
    args.extend_from_slice(TINY);
    let out = ncalm(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.lr"), "{err}");
}

#[test]
fn trains_from_generated_token_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(&[
        "generate",
        "--out",
        data.to_str().unwrap(),
        "--rules",
        "16",
        "--val-rules",
        "4",
        "--grid",
        "4",
        "--seq-len",
        "64",
    ]);
    let run = tmp.path().join("run");
    let log =
        train(&run, &["--steps", "4", "--data", data.to_str().unwrap(), "--set", "train.eval_sequences=4"]);
    assert!(log.contains("sequences from"), "{log}");
    assert_eq!(common::logged_steps(&run).len(), 2);
    // Files whose sequences are shorter than the context are refused.
    let out = ncalm(&[
        "train",
        "--out",
        tmp.path().join("r2").to_str().unwrap(),
        "--preset",
        "tiny",
        "--set",
        "model.context=128",
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("context needs 128"));
}

#[test]
fn divergence_names_step_and_tensor_and_keeps_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut args = vec!["train", "--out", run.to_str().unwrap(), "--steps", "20"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&[
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.warmup_steps=0",
        "--set",
        "train.lr=1e38",
    ]);
    let out = ncalm(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a run at lr 1e38 should diverge");
    assert!(err.contains("training diverged at step") && err.contains("first non-finite tensor"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Whatever checkpoint exists loads.
    if run.join("latest").exists() {
        ncalm::train::checkpoint::load(&run).unwrap();
    }
}

/// Half precision end to end: a loss scale of 1e20 overflows the f32 sum of squared gradients, so the
/// first steps are skipped while the scale halves; then training goes on, and the log says so. On an
/// adapter without f16 arithmetic the run is refused before any work.
#[test]
fn half_precision_backs_off_its_loss_scale_and_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("f16");
    let mut args = vec!["train", "--out", run.to_str().unwrap(), "--steps", "30"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&["--set", "train.precision=f16", "--set", "train.loss_scale=1e20"]);
    let gpu = common::gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SHADER_F16) {
        let out = ncalm(&args);
        assert!(String::from_utf8_lossy(&out.stderr).contains("SHADER_F16"));
        return;
    }
    let log = ok(&args);
    assert!(log.contains("precision f16") && log.contains("steps skipped"), "{log}");
    let steps: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss_scale").is_some())
        .collect();
    let scales: Vec<f64> = steps.iter().map(|v| v["loss_scale"].as_f64().unwrap()).collect();
    let skipped = steps.last().unwrap()["skipped_steps"].as_u64().unwrap();
    println!("loss scales {scales:?}, {skipped} steps skipped");
    assert!(scales.windows(2).all(|w| w[1] <= w[0]) && scales[scales.len() - 1] < 1e20, "{scales:?}");
    assert!((1..30).contains(&skipped), "{skipped} steps skipped");
    // Once the scale fits, steps are taken: the last window logs a finite gradient norm.
    assert!(steps.last().unwrap()["grad_norm"].as_f64().is_some_and(f64::is_finite));
    // A resumed run continues with the saved scale and count: no step is skipped again.
    ok(&["train", "--resume", run.to_str().unwrap(), "--steps", "34"]);
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: serde_json::Value = text
        .lines()
        .rev()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v.get("loss_scale").is_some())
        .unwrap();
    assert_eq!(last["step"].as_u64(), Some(34), "{last}");
    assert_eq!(last["loss_scale"].as_f64(), Some(scales[scales.len() - 1]), "{last}");
    assert_eq!(last["skipped_steps"].as_u64(), Some(skipped), "{last}");
    assert!(last["grad_norm"].as_f64().is_some_and(f64::is_finite), "a resumed step was skipped: {last}");

    let refused = tmp.path().join("refused");
    let out = Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(["train", "--out", refused.to_str().unwrap(), "--steps", "1"])
        .args(TINY)
        .args(["--set", "train.precision=f16"])
        .env("NCALM_DISABLE_FEATURES", "f16")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SHADER_F16") && !err.contains("panicked"), "{err}");
    assert!(!refused.join("latest").exists());
}

#[test]
fn device_limits_are_named_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    // An embedding of 5M x 32 floats (640 MB) exceeds any storage binding lavapipe (128 MiB) offers.
    let run = tmp.path().join("big");
    let out = ncalm(&[
        "train",
        "--preset",
        "tiny",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "model.vocab_size=5000000",
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("model.embed_tokens.weight") && err.contains("bytes"),
        "{err}"
    );
    assert!(!run.join("latest").exists());
    // A micro-batch whose activations exceed the device's largest buffer: the message says what to lower.
    let out = ncalm(&[
        "train",
        "--preset",
        "tiny",
        "--out",
        tmp.path().join("wide").to_str().unwrap(),
        "--set",
        "train.batch=4096",
        "--steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("train.batch") && !err.contains("panicked"), "{err}");
}
