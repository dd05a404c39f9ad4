//! Runs `examples/embed.rs` (built by `cargo test`): a host program that creates its own device and
//! hands it to ncalm.

use std::process::Command;

#[test]
fn host_application_runs_nca_on_its_own_device() {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("examples");
    let example = dir.join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    if !example.exists() {
        // A filtered `cargo test --test ...` does not build examples: build it with the same profile.
        let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--example", "embed", "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the example failed");
    }
    let out = Command::new(&example).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "example failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("host device on"), "{stdout}");
    assert!(stdout.contains("read back 16400 tokens"), "{stdout}");
    assert!(stdout.contains("equals the CPU reference: true"), "{stdout}");
}
