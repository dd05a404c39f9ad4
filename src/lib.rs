pub mod cli;
pub mod data;
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
