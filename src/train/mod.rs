//! Training: the data streams, checkpoints, and the loop.

mod allreduce;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod memory;
pub mod metrics;
pub mod profile;
mod run;
pub(crate) mod setup;
pub mod trainer;
mod validation;
