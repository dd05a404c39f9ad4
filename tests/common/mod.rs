//! Shared helpers of the GPU integration tests. They need a device: on machines without a GPU, Mesa's
//! lavapipe provides one (`.ci/run` installs it).
#![allow(dead_code)]

use std::process::{Command, Output};

use ncalm::{Gpu, GpuOptions};

pub fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("GPU tests need a device: {e:#}"))
}

/// Runs the `ncalm` binary.
pub fn ncalm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap()
}

/// Runs `ncalm`, requires success, and returns standard output and error together.
pub fn ok(args: &[&str]) -> String {
    let out = ncalm(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ncalm {args:?} failed:\n{text}");
    text
}

/// Runs `ncalm`, requires failure with an error mentioning `expect`, and no panic.
pub fn fails(args: &[&str], expect: &str) {
    let out = ncalm(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ncalm {args:?} should fail");
    assert!(err.contains(expect), "ncalm {args:?}: error should mention {expect:?}, got:\n{err}");
    assert!(!err.contains("panicked"), "ncalm {args:?} panicked:\n{err}");
}
