//! Runs `examples/train_host.rs` (built by `cargo test`): a host program that creates its own device
//! and trains on it through `Trainer`.

mod common;

use std::process::Command;

#[test]
fn host_application_trains_on_its_own_device() {
    let example = common::example("train_host");
    let out = Command::new(&example).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("host device on"), "{stdout}");
    assert!(stdout.contains("the host's device)"), "ncalm should train on the host's device:\n{stdout}");
    for step in [4, 8, 12] {
        assert!(stdout.contains(&format!("step {step:>2}: loss ")), "{stdout}");
    }
    assert!(stdout.contains("(read 4 steps back)"), "{stdout}");
    assert!(stdout.contains("loss went from") && stdout.contains(": down"), "{stdout}");
    assert!(stdout.contains("validation loss "), "{stdout}");
    assert!(stdout.contains("saved the checkpoint of step 12 to "), "{stdout}");
}
