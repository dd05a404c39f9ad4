//! Training: the data streams, checkpoints, and the loop.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod profile;
pub mod trainer;
