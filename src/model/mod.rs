//! The Llama-style decoder: its configuration, parameters, the GPU model (forward and backward
//! as sequences of op kernels) and its f64 reference.

pub mod config;
pub mod dropout;
pub mod gpu;
pub mod infer;
pub mod params;
pub mod reference;
pub mod stage2_init;

pub use config::ModelConfig;
pub use params::{HostParams, ParamIndex, ParamInfo};
