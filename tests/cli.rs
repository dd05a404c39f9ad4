//! The `ncalm` command end to end: files and manifests, determinism, shards, and clear errors.

mod common;

use common::{fails, ok};
use std::path::Path;

const SMALL: &[&str] = &["--rules", "30", "--val-rules", "7", "--seq-len", "200", "--seed", "5"];

fn generate(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["generate", "--out", dir.to_str().unwrap()];
    // The small defaults, less those `extra` sets.
    for pair in SMALL.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    ok(&args)
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn info_reports_the_adapter() {
    let text = ok(&["info"]);
    assert!(
        text.contains("adapter") && text.contains("backend") && text.contains("max storage binding"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&["info", "--json"])).unwrap();
    assert!(
        json["adapter"]["name"].is_string() && json["limits"]["max_storage_buffer_binding_size"].is_u64()
    );
    // Whether the matmul on cooperative matrices runs here, and if not why (true, or the reason).
    let coop = text.lines().find(|l| l.starts_with("cooperative matmul")).expect(&text);
    assert!(coop.contains("coop16 runs") || coop.contains("coop16 cannot run: it needs"), "{coop}");
    let coop_json = &json["cooperative_matmul"];
    assert!(coop_json == &serde_json::Value::Bool(true) || coop_json.is_string(), "{coop_json}");
    assert_eq!(coop.contains("coop16 runs"), coop_json == &serde_json::Value::Bool(true));
    // The same for attention's.
    let coop = text.lines().find(|l| l.starts_with("cooperative attention")).expect(&text);
    assert!(coop.contains("coop16 runs") || coop.contains("coop16 cannot run: it needs"), "{coop}");
    assert_eq!(coop.contains("coop16 runs"), json["cooperative_attention"] == serde_json::Value::Bool(true));
}

#[test]
fn generate_writes_what_the_manifest_says_and_repeats_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    generate(&a, &[]);
    generate(&b, &[]);
    for file in ["train.bin", "val.bin", "manifest.json"] {
        assert_eq!(
            std::fs::read(a.join(file)).unwrap(),
            std::fs::read(b.join(file)).unwrap(),
            "{file} differs"
        );
    }
    let m = manifest(&a);
    for key in [
        "seq_len",
        "vocab_size",
        "states",
        "grid",
        "band",
        "candidates",
        "accepted",
        "acceptance_rate",
        "sequences",
        "tokens",
        "seed",
        "gzip_histogram",
    ] {
        assert!(!m[key].is_null(), "manifest lacks {key}");
    }
    assert_eq!(
        (m["seq_len"].as_u64(), m["vocab_size"].as_u64(), m["sequences"].as_u64()),
        (Some(200), Some(10_002), Some(30))
    );
    assert_eq!(m["tokens"].as_u64(), Some(30 * 201));
    assert_eq!(std::fs::metadata(a.join("train.bin")).unwrap().len(), 30 * 201 * 2);
    assert_eq!(std::fs::metadata(a.join("val.bin")).unwrap().len(), 7 * 201 * 2);
    let hist: u64 = m["gzip_histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(hist, m["candidates"].as_u64().unwrap());
    let rate = m["acceptance_rate"].as_f64().unwrap();
    assert!((rate - m["accepted"].as_f64().unwrap() / m["candidates"].as_f64().unwrap()).abs() < 1e-12);
    // Every sequence starts with <grid> and has </grid> where the layout puts it.
    let bytes = std::fs::read(a.join("train.bin")).unwrap();
    let tokens: Vec<u16> = bytes.chunks(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    for seq in tokens.chunks(201) {
        assert_eq!((seq[0], seq[37], seq[38]), (10_000, 10_001, 10_000));
        assert!(seq.iter().all(|&t| t < 10_002));
    }
    // A different seed gives different data.
    let c = tmp.path().join("c");
    generate(&c, &["--seed", "6", "--rules", "30"]);
    assert_ne!(std::fs::read(a.join("train.bin")).unwrap(), std::fs::read(c.join("train.bin")).unwrap());
}

#[test]
fn shards_concatenate_to_the_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    generate(&whole, &[]);
    for split in ["train.bin", "val.bin"] {
        let mut joined = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!("part{i}"));
            if !dir.exists() {
                generate(&dir, &["--shard", &format!("{i}/3")]);
            }
            joined.extend(std::fs::read(dir.join(split)).unwrap());
        }
        assert_eq!(
            joined,
            std::fs::read(whole.join(split)).unwrap(),
            "{split} shards do not concatenate to the whole"
        );
    }
    assert_eq!(manifest(&tmp.path().join("part1"))["shard"]["index"].as_u64(), Some(1));
}

#[test]
fn cpu_reference_generation_equals_gpu_generation() {
    let tmp = tempfile::tempdir().unwrap();
    let (gpu, cpu) = (tmp.path().join("gpu"), tmp.path().join("cpu"));
    generate(&gpu, &["--rules", "6", "--val-rules", "2"]);
    generate(&cpu, &["--rules", "6", "--val-rules", "2", "--cpu"]);
    assert_eq!(std::fs::read(gpu.join("train.bin")).unwrap(), std::fs::read(cpu.join("train.bin")).unwrap());
}

#[test]
fn forced_simulator_kernels_write_the_same_bytes() {
    // `NCALM_NCA` picks the GPU simulator's kernel; every one writes the data `sim1` writes.
    let tmp = tempfile::tempdir().unwrap();
    let extra = ["--rules", "6", "--val-rules", "2"];
    let base = tmp.path().join("default");
    generate(&base, &extra);
    for kernel in ["sim1", "u8x4", "u8x8skip"] {
        let dir = tmp.path().join(kernel);
        let mut args = vec!["generate", "--out", dir.to_str().unwrap()];
        for pair in SMALL.chunks(2).filter(|pair| !extra.contains(&pair[0])) {
            args.extend_from_slice(pair);
        }
        args.extend_from_slice(&extra);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ncalm"))
            .args(&args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("NCALM_NCA", kernel)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A device with less workgroup memory (WebGPU's 16 KiB) cannot run the widest kernels.
        let needs =
            format!("bytes of workgroup memory for the simulator kernel {kernel}, but this device offers");
        if !out.status.success() && stderr.contains(&needs) {
            common::skipped(kernel, stderr.trim());
            continue;
        }
        assert!(out.status.success(), "{kernel}: {stderr}");
        for entry in std::fs::read_dir(&base).unwrap() {
            let name = entry.unwrap().file_name();
            if name.to_str().unwrap().ends_with(".bin") {
                assert_eq!(
                    std::fs::read(base.join(&name)).unwrap(),
                    std::fs::read(dir.join(&name)).unwrap(),
                    "{kernel}: {name:?} differs"
                );
            }
        }
    }
}

#[test]
fn stats_and_render_draw_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    generate(&dir, &["--states", "4", "--grid", "8", "--band", "0.3:0.6"]);
    let text = ok(&["stats", dir.to_str().unwrap()]);
    assert!(text.contains("zipf slope") && text.contains("distinct tokens"), "{text}");
    assert!(dir.join("stats.png").exists() && dir.join("stats.json").exists());
    for ext in ["png", "gif"] {
        let pic = tmp.path().join(format!("t.{ext}"));
        ok(&["render", "--seed", "5", "--rule-index", "2", "--out", pic.to_str().unwrap(), "--frames", "6"]);
        assert!(std::fs::metadata(&pic).unwrap().len() > 100);
    }
}

#[test]
fn bad_arguments_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let o = out.to_str().unwrap();
    fails(&["generate", "--out", o, "--grid", "11"], "grid must be an even number");
    fails(&["generate", "--out", o, "--states", "16"], "states must be in 2..=15");
    fails(&["generate", "--out", o, "--band", "0.6:0.5"], "complexity band");
    fails(&["generate", "--out", o, "--band", "half"], "LO:HI");
    fails(&["generate", "--out", o, "--shard", "3/3"], "shard must be written I/N");
    fails(&["generate", "--out", o, "--seq-len", "1"], "sequence length");
    fails(&["generate", "--out", o, "--rules", "0"], "--rules must be at least 1");
    fails(&["generate", "--out", o, "--temperature", "0"], "temperature");
    fails(&["render", "--out", tmp.path().join("t.jpg").to_str().unwrap()], ".png or .gif");
    fails(&["stats", tmp.path().join("nothing").to_str().unwrap()], "manifest.json");
    assert!(
        !out.exists() || std::fs::read_dir(&out).unwrap().next().is_none(),
        "a failed run left files behind"
    );
}

#[test]
fn unreachable_band_stops_with_the_measured_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let o = tmp.path().join("x");
    // No rule compresses worse than i.i.d. noise (~0.67): the search must stop, not run forever.
    fails(
        &[
            "generate",
            "--out",
            o.to_str().unwrap(),
            "--rules",
            "50",
            "--val-rules",
            "0",
            "--band",
            "0.8:1.0",
            "--seq-len",
            "50",
        ],
        "too few candidate rules pass the complexity band (0.8, 1): 0 of",
    );
    assert!(!o.join("manifest.json").exists() && !o.join("train.bin").exists());
}

#[test]
fn existing_data_is_not_overwritten_and_bad_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    generate(&dir, &["--rules", "4", "--val-rules", "1"]);
    let before = std::fs::read(dir.join("train.bin")).unwrap();
    fails(&["generate", "--out", dir.to_str().unwrap(), "--rules", "5"], "--force");
    assert_eq!(std::fs::read(dir.join("train.bin")).unwrap(), before);
    // A truncated token file is caught with its name.
    std::fs::write(dir.join("train.bin"), &before[..before.len() - 3]).unwrap();
    fails(&["stats", dir.to_str().unwrap()], "train.bin");
    // An out-of-vocabulary token is caught with its position.
    let mut bad = before.clone();
    bad[10] = 0xFF;
    bad[11] = 0xFF;
    std::fs::write(dir.join("train.bin"), &bad).unwrap();
    fails(&["stats", dir.to_str().unwrap()], "position 5");
    std::fs::write(dir.join("manifest.json"), "{ not json").unwrap();
    fails(&["stats", dir.to_str().unwrap()], "not a valid ncalm manifest");
}
