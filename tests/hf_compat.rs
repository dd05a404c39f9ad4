//! A checkpoint without head bias loads in Hugging Face transformers' LlamaForCausalLM and gives the
//! same loss as ncalm (scripts/check_hf.py). Skipped, saying so, where torch and transformers are not
//! installed.

use std::process::Command;

#[test]
fn checkpoint_matches_transformers() {
    let has_hf = Command::new("python3")
        .args(["-c", "import torch, transformers"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_hf {
        eprintln!("skipped: python3 with torch and transformers is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let data = tmp.path().join("data");
    let bin = env!("CARGO_BIN_EXE_ncalm");
    let ok = |args: &[&str]| {
        let out = Command::new(bin).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap();
        assert!(out.status.success(), "ncalm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(&[
        "generate",
        "--out",
        data.to_str().unwrap(),
        "--rules",
        "8",
        "--val-rules",
        "8",
        "--grid",
        "4",
        "--seq-len",
        "64",
    ]);
    ok(&[
        "train",
        "--out",
        run.to_str().unwrap(),
        "--preset",
        "tiny",
        "--set",
        "model.head_bias=false",
        "--steps",
        "5",
    ]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/check_hf.py");
    let val = data.join("val.bin");
    let out = Command::new("python3")
        .args([
            script,
            "--checkpoint",
            run.to_str().unwrap(),
            "--tokens",
            val.to_str().unwrap(),
            "--seq-len",
            "64",
            "--ncalm",
            bin,
        ])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success() && text.contains("OK:"), "{text}");
}
