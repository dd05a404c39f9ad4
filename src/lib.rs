pub mod gpu;
pub mod nca;
pub mod plot;
pub mod rng;

pub use gpu::{Gpu, GpuOptions};
pub use wgpu;
