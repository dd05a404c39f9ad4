//! Element-wise helpers of the backward pass: adding a branch's input gradient into the residual
//! stream's gradient.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader};

pub const SHADER: Shader =
    Shader { name: "elementwise", source: include_str!("../../shaders/elementwise.wgsl"), with_rng: false };

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// x += y.
pub fn add_assign(rec: &mut Recorder, x: &GpuTensor, y: &GpuTensor) -> Result<()> {
    ensure!(
        x.len == y.len,
        "add_assign: {} ({}) and {} ({}) differ in length",
        x.label,
        x.len,
        y.label,
        y.len
    );
    let params = Params { n: x.len as u32, _pad: [0; 3] };
    rec.dispatch(&SHADER, "add_assign", &params, &[x, y], grid_1d((x.len as u32).div_ceil(256)))
}
