//! The language stage: transfer keeps the stage-1 blocks (read back from the checkpoints), ablations and
//! freezing act on the parts they name, eval and sample work on the exported checkpoints, and the
//! experiment writes its report end to end.

mod common;

use std::path::Path;

use common::{ncalm, ok};
use ncalm::train::checkpoint;

/// The test corpus, a fifth of it held out.
fn corpus(dir: &Path) -> String {
    common::code_corpus(dir, &["--val-fraction", "0.2"])
}

/// `train --stage text --preset tiny` on `data` from the stage-1 run `init` into `out`, then `extra`.
fn text_stage<'a>(data: &'a str, init: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let (init, out) = (init.to_str().unwrap(), out.to_str().unwrap());
    let mut args =
        vec!["train", "--stage", "text", "--preset", "tiny", "--data", data, "--init", init, "--out", out];
    args.extend_from_slice(extra);
    args
}

fn tensor(ck: &checkpoint::Checkpoint, name: &str) -> Vec<f32> {
    let (infos, _) = ncalm::model::params::param_infos(&ck.config);
    ck.params[infos.iter().position(|i| i.name == name).unwrap()].clone()
}

#[test]
fn transfer_freeze_eval_and_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let s1 = tmp.path().join("s1");
    ok(&["train", "--preset", "tiny", "--out", s1.to_str().unwrap(), "--steps", "3"]);
    let stage1 = checkpoint::load(&s1).unwrap();

    // One step at the schedule's first learning rate (0): the stage-2 checkpoint holds the stage-1
    // blocks exactly, and a new embedding and head for the byte vocabulary.
    let s2 = tmp.path().join("s2");
    ok(&text_stage(&data, &s1, &s2, &["--steps", "1"]));
    let stage2 = checkpoint::load(&s2).unwrap();
    for name in
        ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    {
        assert_eq!(tensor(&stage1, name), tensor(&stage2, name), "{name} was not transferred");
    }
    assert_eq!(stage2.config.vocab_size, 320);
    assert!(!stage2.config.head_bias);
    let embed = tensor(&stage2, "model.embed_tokens.weight");
    let std = (embed.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / embed.len() as f64).sqrt();
    assert!((std - 1.0).abs() < 0.1, "stage-2 embedding std {std}");

    // Freezing attention and re-initialising the MLP of layer 1.
    let s3 = tmp.path().join("s3");
    let freeze = ["--steps", "6", "--freeze", "attn", "--reinit", "mlp", "--layers", "1"];
    ok(&text_stage(&data, &s1, &s3, &freeze));
    let stage3 = checkpoint::load(&s3).unwrap();
    let same = |name: &str| tensor(&stage1, name) == tensor(&stage3, name);
    // Layer 1: attention frozen (still the stage-1 values), MLP re-initialised; layer 0 trained.
    assert!(same("model.layers.1.self_attn.k_proj.weight"), "frozen attention moved");
    assert!(!same("model.layers.1.mlp.up_proj.weight"), "the re-initialised MLP kept its stage-1 values");
    assert!(!same("model.layers.0.self_attn.k_proj.weight"), "layer 0 did not train");

    // Incompatible shapes are named.
    let bad = tmp.path().join("bad");
    let out = ncalm(&text_stage(&data, &s1, &bad, &["--set", "model.mlp_hidden=48", "--steps", "1"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mlp.gate_proj.weight") && err.contains("[64, 32]") && err.contains("[48, 32]"),
        "{err}"
    );

    let eval = ok(&["eval", s3.to_str().unwrap(), "--data", &data]);
    assert!(eval.contains("perplexity"), "{eval}");
    let text = ok(&[
        "sample",
        s3.to_str().unwrap(),
        "--prompt",
        "fn item",
        "--max-tokens",
        "20",
        "--temperature",
        "0",
    ]);
    assert!(text.starts_with("fn item"), "{text}");
}

#[test]
fn experiment_writes_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("exp");
    let log = ok(&[
        "experiment",
        "--text",
        &data,
        "--preset",
        "tiny",
        "--nca-tokens",
        "1024",
        "--text-tokens",
        "2048",
        "--seeds",
        "1,2",
        "--arms",
        "scratch,nca,dyck",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(log.contains("| scratch |") && log.contains("| nca |") && log.contains("| dyck |"), "{log}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("demonstration") && md.contains("What the NCA stage learned") && md.contains("N(0, 1)"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["report"]["arms"].as_array().unwrap().len(), 2);
    assert_eq!(json["report"]["arms"][0]["paired"].as_array().unwrap().len(), 2);
    assert!(std::fs::metadata(out.join("curves.png")).unwrap().len() > 1000);
    // Every arm is measured against scratch, so scratch cannot be left out.
    let out2 = ncalm(&[
        "experiment",
        "--text",
        &data,
        "--arms",
        "nca",
        "--out",
        tmp.path().join("e2").to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out2.stderr).contains("must include scratch"));
}

#[test]
fn experiment_compares_architectures_at_equal_flops() {
    let tmp = tempfile::tempdir().unwrap();
    let data = corpus(tmp.path());
    let out = tmp.path().join("arch");
    #[rustfmt::skip]
    let log = ok(&[
        "experiment", "--arch", "both", "--text", &data, "--nca-tokens", "1024", "--text-tokens", "2048",
        "--seeds", "1", "--arms", "scratch,nca", "--out", out.to_str().unwrap(),
    ]);
    let md = std::fs::read_to_string(out.join("architectures.md")).unwrap();
    for curve in ["| transformer scratch |", "| transformer nca |", "| nca scratch |", "| nca nca |"] {
        assert!(md.contains(curve), "{curve} missing from\n{md}\n{log}");
    }
    assert!(std::fs::metadata(out.join("architectures.png")).unwrap().len() > 1000);
    let nca_report = std::fs::read_to_string(out.join("nca/report.md")).unwrap();
    assert!(nca_report.contains("receptive field 13 tokens"), "{nca_report}");
    // A preset of the other architecture is refused.
    let wrong = ncalm(&["experiment", "--arch", "nca", "--preset", "tiny", "--text", &data]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("is a transformer model"), "{err}");
}
