//! Training: the data streams, checkpoints, the loop, and [`Trainer`] for a caller that drives the steps.

mod allreduce;
pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod memory;
pub mod metrics;
pub mod profile;
mod run;
pub mod session;
pub(crate) mod setup;
pub mod trainer;
mod validation;

pub use session::{StepLoss, Trainer};
