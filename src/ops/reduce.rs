//! Deterministic reductions of an f32 tensor to one value: the sum (the loss over rows) and the sum of
//! squares (the global gradient norm for clipping). Two stages with a fixed order and no atomics, so the
//! result is identical run to run, and it stays on the GPU for the kernels that read it.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, ReducingShader, WgslConst};

pub const SHADER: ReducingShader =
    reducing_shader!("reduce", "reduce.wgsl", &[("BLOCK", WgslConst::U32(BLOCK as u32))]);

/// Elements each stage-1 workgroup reduces (256 threads x 16).
pub const BLOCK: usize = 4096;

/// The longest input: the shader's u32 indices must not wrap within the last block.
pub const MAX_LEN: usize = u32::MAX as usize - BLOCK;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    partials: u32,
    /// Where a listed stage 1 writes its first partial.
    base: u32,
    _pad: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { n, partials, base })
}

/// Elements of scratch (one partial per stage-1 workgroup) that reducing `len` values needs.
pub fn scratch_len(len: usize) -> usize {
    len.div_ceil(BLOCK).max(1)
}

/// `out[0]` = sum of x.
pub fn sum(rec: &mut Recorder, x: &GpuTensor, out: &GpuTensor, scratch: &GpuTensor) -> Result<()> {
    reduce(rec, "block_sums", x, out, scratch)
}

/// `out[0]` = sum of x^2.
pub fn sum_squares(rec: &mut Recorder, x: &GpuTensor, out: &GpuTensor, scratch: &GpuTensor) -> Result<()> {
    reduce(rec, "block_sums_of_squares", x, out, scratch)
}

fn reduce(
    rec: &mut Recorder,
    stage1: &str,
    x: &GpuTensor,
    out: &GpuTensor,
    scratch: &GpuTensor,
) -> Result<()> {
    ensure!(x.len <= MAX_LEN, "reduce: {} values exceed the limit of {MAX_LEN}", x.len);
    ensure!(out.len >= 1, "reduce: the output tensor {} is empty", out.label);
    let need = scratch_len(x.len);
    ensure!(
        scratch.len >= need,
        "reduce: scratch {} holds {} values; reducing {} needs {need} (reduce::scratch_len)",
        scratch.label,
        scratch.len,
        x.len
    );
    let partials = x.len.div_ceil(BLOCK) as u32;
    let params = Params { n: x.len as u32, partials, base: 0, _pad: 0 };
    let tensors = [x, scratch, out];
    rec.dispatch(&SHADER.for_gpu(rec.gpu()), stage1, &params, &tensors, grid_1d(partials))?;
    // One workgroup always runs, so an empty input still writes 0.
    rec.dispatch(&SHADER.for_gpu(rec.gpu()), "finish", &params, &tensors, [1, 1, 1])
}

/// Stage 1 of a sum of squares over the blocks `table` lists (its first `count` rows of four u32: first
/// element of `x`, end, two ignored), at most [`BLOCK`] elements each: `partials[base + b]` = the sum of
/// squares of block b. [`finish`] then sums the partials. The blocks of [`adamw::Blocks`] fit.
///
/// [`adamw::Blocks`]: super::adamw::Blocks
pub fn sums_of_squares_listed(
    rec: &mut Recorder,
    x: &GpuTensor,
    table: &GpuTensor,
    count: u32,
    base: u32,
    partials: &GpuTensor,
) -> Result<()> {
    ensure!(
        table.len >= count as usize * 4,
        "reduce: the block table {} lists fewer than {count} blocks",
        table.label
    );
    ensure!(
        partials.len >= base as usize + count as usize,
        "reduce: partials {} hold {} values; blocks {base}..{} do not fit",
        partials.label,
        partials.len,
        base + count
    );
    let params = Params { n: count, partials: 0, base, _pad: 0 };
    let shader = SHADER.for_gpu(rec.gpu());
    rec.dispatch(
        &shader,
        "block_sums_of_squares_listed",
        &params,
        &[x, partials, partials, table],
        grid_1d(count),
    )
}

/// `out[0]` = the sum of the first `count` values of `partials`, in the order stage 2 of every reduction
/// here uses.
pub fn finish(rec: &mut Recorder, partials: &GpuTensor, count: u32, out: &GpuTensor) -> Result<()> {
    ensure!(
        partials.len >= count as usize,
        "reduce: partials {} hold fewer than {count} values",
        partials.label
    );
    ensure!(out.len >= 1, "reduce: the output tensor {} is empty", out.label);
    let params = Params { n: 0, partials: count, base: 0, _pad: 0 };
    rec.dispatch(&SHADER.for_gpu(rec.gpu()), "finish", &params, &[partials, partials, out], [1, 1, 1])
}

/// The plain-Rust reference (f64).
pub mod reference {
    pub fn sum(x: &[f64]) -> f64 {
        x.iter().sum()
    }

    pub fn sum_squares(x: &[f64]) -> f64 {
        x.iter().map(|v| v * v).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn scratch_holds_one_partial_per_block() {
        assert_eq!(scratch_len(0), 1);
        assert_eq!(scratch_len(1), 1);
        assert_eq!(scratch_len(BLOCK), 1);
        assert_eq!(scratch_len(BLOCK + 1), 2);
        assert_eq!(scratch_len(MAX_LEN), MAX_LEN.div_ceil(BLOCK));
    }

    #[test]
    fn reference_sum_of_squares_gradient_matches_finite_differences() {
        // d/dx sum(x^2) = 2x: checked mid-graph through a weighted sum of two outputs.
        let x = randn(13, 1);
        let (a, b) = (0.3, -1.7);
        let f = |x: &[f64]| a * reference::sum(x) + b * reference::sum_squares(x);
        let fd = finite_difference(&f, &x, 1e-6);
        let analytic: Vec<f64> = x.iter().map(|v| a + 2.0 * b * v).collect();
        assert_close("reduce gradients vs finite differences", &analytic, &fd, 1e-6);
        assert_eq!(reference::sum(&[1.0, 2.0, 3.5]), 6.5);
        assert_eq!(reference::sum_squares(&[1.0, -2.0, 3.0]), 14.0);
    }
}
