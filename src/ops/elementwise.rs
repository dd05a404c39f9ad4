//! Element-wise helpers: adding a branch's input gradient into the residual stream's gradient, and
//! copies between views of one buffer.

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

/// dst = src; unlike a buffer copy, also between views of one buffer.
pub fn copy(rec: &mut Recorder, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
    ensure!(
        src.len == dst.len,
        "copy: {} ({}) and {} ({}) differ in length",
        src.label,
        src.len,
        dst.label,
        dst.len
    );
    let params = Params { n: src.len as u32, _pad: [0; 3] };
    rec.dispatch(&SHADER, "copy", &params, &[src, dst], grid_1d((src.len as u32).div_ceil(256)))
}
