//! Training: checkpoints, the data streams, and the loop.

pub mod checkpoint;
