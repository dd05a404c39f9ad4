//! ncalm: training language models on neural cellular automata, with hand-written WGSL kernels on any
//! GPU wgpu reaches.
//!
//! - [`nca`]: random NCA rules, their simulation (CPU reference and GPU kernel), tokens and the gzip
//!   complexity filter, and the data sets `ncalm generate` writes.
//! - [`ops`]: one op per file, GPU launchers for forward and backward beside an f64 reference.
//! - [`config`]: presets and every setting: the model, training, stage 1's data (the NCA rule family and
//!   band), overrides.
//! - [`model`]: the model's configuration, parameters, the GPU model and its reference, stage-2
//!   initialisation.
//! - [`train`]: set-up, the training loop, one step, validation and metrics, checkpoints, data streams.
//! - [`data`], [`experiment`]: text corpora, tokenizers and Dyck-k sequences, and the paper's comparison.
//! - [`distributed`]: the ranks of a data-parallel run across processes (MPI, with the `mpi` feature).
//! - [`gpu`]: the device context (own or borrowed from a host application), kernels, the profiler.
//!
//! A host application hands over its own device with [`Gpu::from_device`]; `examples/embed.rs` shows it.
//! It can train on that device step by step with [`train::Trainer`]; `examples/train_host.rs` shows that.

pub mod config;
pub mod data;
pub mod distributed;
pub mod experiment;
pub mod gpu;
pub mod model;
pub mod nca;
pub mod ops;
pub mod plot;
pub mod rng;
pub mod train;
pub mod util;

pub use gpu::{Gpu, GpuOptions};
pub use wgpu;
