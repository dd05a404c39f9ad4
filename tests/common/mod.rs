//! Shared helpers of the GPU integration tests. They need a device: on machines without a GPU, Mesa's
//! lavapipe provides one (`.ci/run` installs it).
#![allow(dead_code)]

use ncalm::{Gpu, GpuOptions};

pub fn gpu() -> Gpu {
    Gpu::new(&GpuOptions::default()).unwrap_or_else(|e| panic!("GPU tests need a device: {e:#}"))
}
