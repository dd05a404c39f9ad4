//! Faults during training: SIGTERM ends a run with a checkpoint it can resume from, SIGKILL at any moment
//! leaves the latest checkpoint loadable, and a full disk while writing a checkpoint leaves the previous
//! one intact.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ncalm::train::checkpoint;

fn spawn_training(run: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "train",
        "--preset",
        "tiny",
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "100",
        "--set",
        "train.log_every=1",
        "--set",
        "train.eval_every=1000",
        "--set",
        "train.total_steps=1000",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(&args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's log until a line contains `needle` (or it ends).
fn wait_for(child: &mut Child, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let reader = BufReader::new(child.stderr.take().unwrap());
    let mut iter = reader.lines();
    for line in iter.by_ref() {
        let line = line.unwrap();
        let found = line.contains(needle);
        lines.push(line);
        if found {
            break;
        }
    }
    // Keep draining in the background so the child never blocks on a full pipe.
    std::thread::spawn(move || iter.for_each(drop));
    lines
}

#[test]
fn sigterm_saves_a_resumable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = spawn_training(&run, &[]);
    let log = wait_for(&mut child, "step      3 |");
    assert!(log.iter().any(|l| l.contains("step      3 |")), "{log:?}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted after"), "{stdout}");
    let ck = checkpoint::load(&run).unwrap();
    assert!(ck.state.step >= 3 && ck.state.step < 100, "checkpoint at step {}", ck.state.step);
}

#[test]
fn sigkill_at_any_moment_leaves_a_loadable_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, delay_ms) in [700u64, 1300, 2100].into_iter().enumerate() {
        let run = tmp.path().join(format!("run{i}"));
        // A checkpoint every step: a kill is likely to land inside a write.
        let mut child = spawn_training(&run, &["--set", "train.checkpoint_every=1"]);
        wait_for(&mut child, "step      1 |");
        // The first checkpoint follows the log line; on a loaded machine it can take a while. The kill
        // then lands somewhere in the later steps' writes.
        let first = Instant::now();
        while checkpoint::load(&run).is_err() && first.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let ck = checkpoint::load(&run).unwrap_or_else(|e| panic!("after SIGKILL at +{delay_ms} ms: {e:#}"));
        assert!(ck.state.step >= 1);
        // Unfinished checkpoints stay hidden under temporary names, never as checkpoint-*.
        for entry in std::fs::read_dir(&run).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("checkpoint-") {
                checkpoint::load(&run.join(&name))
                    .unwrap_or_else(|e| panic!("{name} is not complete: {e:#}"));
            }
        }
    }
}

#[test]
fn full_disk_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("small-disk");
    // A 12 MiB file system: room for one tiny-preset checkpoint (about 8 MiB with Adam state) and not
    // for a second beside it.
    let Some(mounted) = common::SmallDisk::mount(&disk, 12) else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root and mount permission)");
        return;
    };
    let run = disk.join("run");
    let start = Instant::now();
    let child = spawn_training(&run, &["--set", "train.checkpoint_every=2"]);
    let out = child.wait_with_output().unwrap();
    let previous = checkpoint::load(&run);
    drop(mounted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "training should fail when the disk fills");
    assert!(stderr.contains("writing checkpoint") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(previous.expect("the previous checkpoint must still load").state.step, 2);
    eprintln!(
        "failed cleanly after {:.1} s: {}",
        start.elapsed().as_secs_f64(),
        stderr.lines().last().unwrap_or("")
    );
}
