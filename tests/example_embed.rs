//! Runs `examples/embed.rs` (built by `cargo test`): a host program that creates its own device and
//! hands it to ncalm.

mod common;

use std::process::Command;

#[test]
fn host_application_runs_nca_on_its_own_device() {
    let example = common::example("embed");
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("host device on"), "{stdout}");
    assert!(stdout.contains("read back 16400 tokens"), "{stdout}");
    assert!(stdout.contains("equals the CPU reference: true"), "{stdout}");
}
