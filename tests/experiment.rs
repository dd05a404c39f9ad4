//! The experiment as units: a run killed mid-unit and resumed, and the tasks of a job array merged by
//! `experiment report`, give the report of one uninterrupted process; a band sweep reports every band;
//! a rerun with other settings is refused with the first difference named.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::{fails, ok};

/// A two-band sweep: scratch and one NCA arm per band, one seed, a few steps per stage (3 units).
fn args<'a>(data: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    #[rustfmt::skip]
    let mut a = vec![
        "experiment", "--text", data, "--preset", "tiny", "--nca-tokens", "512", "--text-tokens", "1024",
        "--seeds", "1", "--arms", "scratch,nca", "--bands", "0.5:1.0,0.55:1.0", "--out", out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    a
}

/// The report without its measured times, the one part that differs between runs.
fn report(out: &Path) -> (String, serde_json::Value) {
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let md = md.split("\n## Wall time").next().unwrap().to_string();
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    json["report"].as_object_mut().unwrap().remove("times").expect("the report records its times");
    (md, json)
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's log until a line contains `first` and a later one `then`; keeps draining after.
fn wait_for(child: &mut Child, first: &str, then: &str) {
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut found_first = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        found_first |= line.contains(first);
        let done = found_first && line.contains(then);
        seen.push(line);
        if done {
            std::thread::spawn(move || lines.for_each(drop));
            return;
        }
    }
    panic!("the log never showed {first:?} then {then:?}:\n{}", seen.join("\n"));
}

#[test]
fn resumed_and_merged_units_give_the_one_process_report() {
    let tmp = tempfile::tempdir().unwrap();
    let data = common::code_corpus(tmp.path(), &[]);

    // One process, uninterrupted: the band sweep reports and ranks both bands.
    let whole = tmp.path().join("whole");
    let log = ok(&args(&data, &whole, &[]));
    assert!(log.contains("predicted wall time") && log.contains("for the longest unit"), "{log}");
    let (md, json) = report(&whole);
    for row in ["| nca 0.5:1.0 |", "| nca 0.55:1.0 |", "## Complexity bands", "| 1 | 0.5", "| 2 | 0.5"] {
        assert!(md.contains(row), "{row} missing from\n{md}");
    }
    assert_eq!(json["report"]["band_ranking"].as_array().unwrap().len(), 2);
    assert!(!md.contains("Missing units"), "{md}");
    let full = std::fs::read_to_string(whole.join("report.md")).unwrap();
    assert!(full.contains("## Wall time") && full.contains("| scratch seed 1 |"), "{full}");

    // A rerun finds every unit finished; one with other settings is refused, the first difference named.
    let again = ok(&args(&data, &whole, &[]));
    assert_eq!(again.matches("finished earlier").count(), 3, "{again}");
    fails(
        &args(&data, &whole, &["--embed-init", "0.5"]),
        "embed_std: the experiment has 1.0, this command 0.5",
    );

    // A job array: each task runs its share; the report of a partial set names what is missing.
    let record = std::fs::read(whole.join("experiment.json")).unwrap();
    let tasks = tmp.path().join("tasks");
    std::fs::create_dir_all(&tasks).unwrap();
    // As if an earlier task had timed the steps and recorded the budgets.
    std::fs::write(tasks.join("experiment.json"), &record).unwrap();
    ok(&args(&data, &tasks, &["--task", "0/3"]));
    ok(&args(&data, &tasks, &["--task", "2/3"]));
    let partial = ok(&["experiment", "report", tasks.to_str().unwrap()]);
    assert!(partial.contains("missing units (1): nca 0.5:1.0 seed 1"), "{partial}");
    assert!(report(&tasks).0.contains("Not finished yet: nca 0.5:1.0 seed 1"));
    ok(&args(&data, &tasks, &["--task", "1/3"]));
    ok(&["experiment", "report", tasks.to_str().unwrap()]);
    assert_eq!(report(&tasks), (md.clone(), json.clone()), "merged tasks differ from the one-process run");

    // Killed twice: SIGTERM in a stage 1 (it saves a checkpoint and exits 130), SIGKILL in a stage 2
    // after a periodic checkpoint; the third invocation resumes and finishes.
    let killed = tmp.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("experiment.json"), &record).unwrap();
    let mut child = spawn(&args(&data, &killed, &[]));
    wait_for(&mut child, "nca 0.5:1.0 seed 1: stage 1", "step      1 |");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    assert!(stdout.contains("interrupted during nca 0.5:1.0 seed 1"), "{stdout}");
    let mut child = spawn(&args(&data, &killed, &[]));
    wait_for(&mut child, "nca 0.55:1.0 seed 1: stage 2", "saved");
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = ok(&args(&data, &killed, &[]));
    assert!(resumed.contains("resuming"), "{resumed}");
    assert_eq!(report(&killed), (md, json), "the resumed run differs from the uninterrupted one");
}
