//! Data-parallel training under `mpirun` (built with `--features mpi`; needs OpenMPI's `mpirun`): two
//! ranks reproduce one process at the same global batch, every failure ends the whole job with its
//! error printed once, and a killed rank leaves a checkpoint that resumes with another number of ranks.
#![cfg(feature = "mpi")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ncalm::train::checkpoint;

/// Largest relative difference allowed between one process and two ranks. The ranks add the two
/// micro-batches' gradients in another order than one process accumulating them does; on lavapipe the
/// losses and gradient norms of four steps differ by at most 6e-8 relative.
const TOLERANCE: f64 = 1e-5;

/// `mpirun -np RANKS ncalm ARGS`. One lavapipe thread per rank, and ranks that yield while they wait, so
/// that two ranks share a small machine's cores instead of spinning against each other.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--allow-run-as-root", "--oversubscribe", "--mca", "mpi_yield_when_idle", "1"])
        .args(["-x", "LP_NUM_THREADS=1", "-x", "XDG_RUNTIME_DIR", "-np", &ranks.to_string()])
        .arg(env!("CARGO_BIN_EXE_ncalm"))
        .env("LP_NUM_THREADS", "1")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd
}

fn ncalm() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ncalm"));
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd
}

/// A short run of the tiny preset with a step's two micro-batches, logging every step.
fn train_args(run: &Path, stage: &str, steps: u64, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--preset",
        "tiny",
        "--stage",
        stage,
        "--steps",
        &steps.to_string(),
        "--out",
        run.to_str().unwrap(),
        "--set",
        "train.grad_accum=2",
        "--set",
        "train.log_every=1",
        "--set",
        "train.total_steps=1000",
        "--set",
        "train.eval_every=1000",
        "--set",
        "data.rules=8",
        "--set",
        "data.val_rules=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-30)
}

#[test]
fn two_ranks_train_as_one_process_at_the_same_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    // NCA simulated on the GPU by the rank that trains on it, and Dyck sequences built on the host.
    for stage in ["nca", "dyck"] {
        let (one, two) = (tmp.path().join(format!("{stage}-one")), tmp.path().join(format!("{stage}-two")));
        let out = ncalm().args(train_args(&one, stage, 4, &[])).output().unwrap();
        assert!(out.status.success(), "one process:\n{}", text(&out));
        let out = mpirun(2).args(train_args(&two, stage, 4, &[])).output().unwrap();
        let log = text(&out);
        assert!(out.status.success(), "two ranks:\n{log}");
        assert!(log.contains("data parallel over 2 ranks: each runs 1 of a step's 2 micro-batches"), "{log}");
        assert_eq!(log.matches("trained 4 steps").count(), 1, "rank 0 alone reports:\n{log}");
        let (a, b) = (common::logged_steps(&one), common::logged_steps(&two));
        assert_eq!(a.len(), 4, "{a:?}");
        assert_eq!(a.iter().map(|s| s.0).collect::<Vec<_>>(), b.iter().map(|s| s.0).collect::<Vec<_>>());
        let mut worst = 0.0f64;
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max(relative(x.1, y.1)).max(relative(x.2, y.2));
            assert!(
                relative(x.1, y.1) < TOLERANCE && relative(x.2, y.2) < TOLERANCE,
                "{stage} step {}: one process {x:?}, two ranks {y:?}",
                x.0
            );
        }
        // The parameters after four steps agree as well.
        let (pa, pb) = (checkpoint::load(&one).unwrap().params, checkpoint::load(&two).unwrap().params);
        let mut params = 0.0f64;
        for (x, y) in pa.iter().flatten().zip(pb.iter().flatten()) {
            params = params.max(f64::from((x - y).abs()));
        }
        assert!(params < 1e-5, "{stage}: parameters differ by up to {params}");
        println!(
            "{stage}: largest relative difference in loss or norm {worst:.2e}; in parameters {params:.2e}"
        );
    }
}

#[test]
fn an_error_every_rank_meets_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Three ranks cannot share two micro-batches.
    let out = mpirun(3).args(train_args(&run, "dyck", 4, &[])).output().unwrap();
    let log = text(&out);
    assert!(!out.status.success(), "{log}");
    assert_eq!(log.matches("cannot share a step's 2 micro-batches evenly").count(), 1, "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing is written before the ranks agree");
}

#[test]
fn a_full_disk_on_rank_0_ends_every_rank_and_keeps_the_previous_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("small-disk");
    // Room for one tiny-preset checkpoint and not for a second beside it (as tests/interrupt.rs).
    let Some(mounted) = common::SmallDisk::mount(&disk, 12) else {
        eprintln!("skipped: cannot mount a small tmpfs here (needs root and mount permission)");
        return;
    };
    let run = disk.join("run");
    let started = Instant::now();
    let out = mpirun(2)
        .args(train_args(&run, "nca", 100, &["--set", "train.checkpoint_every=2"]))
        .output()
        .unwrap();
    let previous = checkpoint::load(&run);
    drop(mounted);
    let log = text(&out);
    assert!(!out.status.success(), "training should fail when the disk fills:\n{log}");
    assert_eq!(log.matches("writing checkpoint").count(), 1, "the error is printed once:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(previous.expect("the previous checkpoint must still load").state.step, 2);
    println!("both ranks ended {:.1} s after the start", started.elapsed().as_secs_f64());
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent is the second field after the command name, which is in parentheses.
        let after = &stat[stat.rfind(')').unwrap_or(0) + 1..];
        if after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// The rank an MPI process was given, from its environment.
fn rank_of(pid: u32) -> Option<u32> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|&b| b == 0)
        .find_map(|v| v.strip_prefix(b"OMPI_COMM_WORLD_RANK="))
        .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok())
}

/// Waits for `child` at most `limit`; kills it and fails if it takes longer.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("the job still runs {limit:?} after a rank was killed: it hangs");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_killed_rank_ends_the_job_and_its_checkpoint_resumes_on_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut job = mpirun(2)
        .args(train_args(&run, "dyck", 200, &["--set", "train.checkpoint_every=2"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Rank 0 logs; its third step follows the first checkpoint.
    let mut lines = BufReader::new(job.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let found = line.contains("step      3 |");
        seen.push(line);
        if found {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    assert!(seen.iter().any(|l| l.contains("saved")), "{seen:?}");
    let rank1 = children(job.id()).into_iter().find(|&p| rank_of(p) == Some(1));
    let rank1 = rank1.unwrap_or_else(|| panic!("no rank 1 among the children of mpirun ({})", job.id()));
    Command::new("kill").args(["-KILL", &rank1.to_string()]).status().unwrap();
    let status = wait_at_most(&mut job, Duration::from_secs(120));
    assert!(!status.success(), "a job that lost a rank must fail");

    let ck = checkpoint::load(&run).expect("the last checkpoint loads");
    assert!(ck.state.step >= 2, "checkpoint at step {}", ck.state.step);
    // One process resumes it: the same global batch, both micro-batches of a step on one rank.
    let until = (ck.state.step + 2).to_string();
    let resume = ["train", "--stage", "dyck", "--resume", run.to_str().unwrap(), "--steps", &until];
    let out = ncalm().args(resume).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(checkpoint::load(&run).unwrap().state.step, ck.state.step + 2);
}

#[test]
fn an_interrupt_that_reaches_one_rank_stops_both_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut job = mpirun(2)
        .args(train_args(&run, "dyck", 500, &[]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(job.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("step      2 |") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    // As a scheduler's time limit might: SIGTERM to rank 1 alone.
    let rank1 = children(job.id()).into_iter().find(|&p| rank_of(p) == Some(1)).expect("rank 1 runs");
    Command::new("kill").args(["-TERM", &rank1.to_string()]).status().unwrap();
    let status = wait_at_most(&mut job, Duration::from_secs(120));
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut job.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(!status.success(), "an interrupted job exits with 130: {status:?}");
    assert!(stdout.contains("interrupted after"), "rank 0 stopped with the others:\n{stdout}");
    let ck = checkpoint::load(&run).expect("the interrupt's checkpoint loads");
    assert!(ck.state.step >= 2 && ck.state.step < 500, "checkpoint at step {}", ck.state.step);
    assert!(stdout.contains(&format!("interrupted after {} steps", ck.state.step)), "{stdout}");
}

/// The validation perplexities of a finished unit's stage 2.
fn unit_curve(out: &Path, unit: &str) -> Vec<f64> {
    let path = out.join("seed-1").join(unit).join("result.json");
    let result: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    result["result"]["curve"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect()
}

#[test]
fn an_experiment_under_mpirun_trains_every_run_with_all_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::code_corpus(tmp.path(), &[]);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let args = |out: &Path| -> Vec<String> {
        #[rustfmt::skip]
        let a = [
            "experiment", "--text", &data, "--preset", "tiny", "--nca-tokens", "1024", "--text-tokens", "2048",
            "--seeds", "1", "--arms", "scratch,nca", "--set", "train.grad_accum=2", "--set",
            "text.grad_accum=2", "--set", "data.rules=8", "--set", "data.val_rules=4", "--out",
            out.to_str().unwrap(),
        ];
        a.iter().map(|s| s.to_string()).collect()
    };
    let out = ncalm().args(args(&one)).output().unwrap();
    assert!(out.status.success(), "one process:\n{}", text(&out));
    // The same budgets as the one process timed.
    std::fs::create_dir_all(&two).unwrap();
    std::fs::copy(one.join("experiment.json"), two.join("experiment.json")).unwrap();
    let out = mpirun(2).args(args(&two)).output().unwrap();
    let log = text(&out);
    assert!(out.status.success(), "two ranks:\n{log}");
    assert_eq!(log.matches("data parallel over 2 ranks").count(), 3, "both stages of nca, scratch's:\n{log}");
    assert_eq!(log.matches("wrote ").count(), 1, "rank 0 alone reports:\n{log}");
    for unit in ["scratch", "nca"] {
        let (a, b) = (unit_curve(&one, unit), unit_curve(&two, unit));
        assert_eq!(a.len(), b.len(), "{unit}");
        for (x, y) in a.iter().zip(&b) {
            assert!(relative(*x, *y) < TOLERANCE, "{unit}: one process {a:?}, two ranks {b:?}");
        }
    }
}
