//! RMSNorm, the Llama normalisation before attention, before the MLP and before the head:
//! y = w * x * r with r = (mean_j x_j^2 + eps)^(-1/2) per row. The forward pass saves r (one float per
//! row) for the backward pass.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use super::Accumulate;
use crate::gpu::{grid_1d, GpuTensor, Recorder, ReducingShader, WgslConst};

pub const SHADER: ReducingShader = reducing_shader!(
    "rmsnorm",
    "rmsnorm.wgsl",
    &[
        ("WG", WgslConst::U32(WORKGROUP)),
        ("ROWS_PER_BLOCK", WgslConst::U32(ROWS_PER_BLOCK)),
        ("ACCUMULATE_DW", WgslConst::U32(Accumulate::DW)),
        ("ACCUMULATE_DX", WgslConst::U32(Accumulate::DX)),
    ]
);

/// Rows summed per workgroup in the first stage of the dw reduction.
const ROWS_PER_BLOCK: u32 = 64;
/// Invocations per workgroup.
const WORKGROUP: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    flags: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { rows, dim, eps, flags })
}

/// Elements of the scratch tensor [`backward`] needs: one partial dw per block of 64 rows.
pub fn scratch_len(rows: u32, dim: u32) -> usize {
    rows.div_ceil(ROWS_PER_BLOCK) as usize * dim as usize
}

fn check_shape(rows: u32, dim: u32) -> Result<usize> {
    let elements = rows as usize * dim as usize;
    ensure!(dim > 0, "rmsnorm: dim must be positive");
    ensure!(elements <= u32::MAX as usize, "rmsnorm: {rows} x {dim} elements exceed u32 indexing");
    Ok(elements)
}

/// y = w * x * r per row of `x` `[rows, dim]`; writes r to `rstd` `[rows]`. `w` is `[dim]`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &GpuTensor,
    y: &GpuTensor,
    rstd: &GpuTensor,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    launch_forward(rec, [x, w, y, rstd], None, rows, dim, eps)
}

/// [`forward`], also copying x into `carry` in the same pass: a block's residual stream, which its
/// output projection then adds to, without a copy of its own.
#[allow(clippy::too_many_arguments)]
pub fn forward_carrying(
    rec: &mut Recorder,
    x: &GpuTensor,
    w: &GpuTensor,
    y: &GpuTensor,
    rstd: &GpuTensor,
    carry: &GpuTensor,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    launch_forward(rec, [x, w, y, rstd], Some(carry), rows, dim, eps)
}

/// [`forward`], or with a `carry` [`forward_carrying`].
fn launch_forward(
    rec: &mut Recorder,
    [x, w, y, rstd]: [&GpuTensor; 4],
    carry: Option<&GpuTensor>,
    rows: u32,
    dim: u32,
    eps: f32,
) -> Result<()> {
    let elements = check_shape(rows, dim)?;
    ensure!(
        x.len == elements && y.len == elements,
        "rmsnorm forward: x {} and y {} must hold rows {rows} x dim {dim} = {elements}",
        x.len,
        y.len
    );
    ensure!(w.len == dim as usize, "rmsnorm forward: w has {} elements, dim is {dim}", w.len);
    ensure!(rstd.len == rows as usize, "rmsnorm forward: rstd has {} elements, rows is {rows}", rstd.len);
    let params = Params { rows, dim, eps, flags: 0 };
    let shader = SHADER.for_gpu(rec.gpu());
    let Some(carry) = carry else {
        return rec.dispatch(&shader, "forward", &params, &[x, w, rstd, y], grid_1d(rows));
    };
    ensure!(carry.len == x.len, "rmsnorm forward: carry has {} elements, x {}", carry.len, x.len);
    ensure!(
        !carry.overlaps(x) && !carry.overlaps(y),
        "rmsnorm forward: carry {} overlaps x or y",
        carry.label
    );
    rec.dispatch(&shader, "forward_carry", &params, &[x, w, rstd, y, carry], grid_1d(rows))
}

/// dx and dw from dy, with `rstd` from [`forward`] (docs/gradients.md), each written or added to as
/// `accumulate` says. dw is reduced in two deterministic stages through `scratch` ([`scratch_len`]
/// elements or more). `dx` may be the same tensor as `dy` when it is overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rec: &mut Recorder,
    dy: &GpuTensor,
    x: &GpuTensor,
    w: &GpuTensor,
    rstd: &GpuTensor,
    dx: &GpuTensor,
    dw: &GpuTensor,
    scratch: &GpuTensor,
    rows: u32,
    dim: u32,
    accumulate: Accumulate,
) -> Result<()> {
    let elements = check_shape(rows, dim)?;
    ensure!(
        [dy.len, x.len, dx.len].iter().all(|&l| l == elements),
        "rmsnorm backward: dy {}, x {} and dx {} must hold rows {rows} x dim {dim} = {elements}",
        dy.len,
        x.len,
        dx.len
    );
    ensure!(
        w.len == dim as usize && dw.len == dim as usize,
        "rmsnorm backward: w {} and dw {} must hold dim {dim}",
        w.len,
        dw.len
    );
    ensure!(rstd.len == rows as usize, "rmsnorm backward: rstd has {} elements, rows is {rows}", rstd.len);
    let needed = scratch_len(rows, dim);
    ensure!(scratch.len >= needed, "rmsnorm backward: scratch has {} elements, needs {needed}", scratch.len);
    ensure!(
        !(accumulate.dx && dx.overlaps(dy)),
        "rmsnorm backward: dx {} adds to itself while overlapping dy {}",
        dx.label,
        dy.label
    );
    let params = Params { rows, dim, eps: 0.0, flags: accumulate.flags() };
    let bindings = [x, w, rstd, dy, dx, dw, scratch];
    let tiles = dim.div_ceil(WORKGROUP);
    let blocks = rows.div_ceil(ROWS_PER_BLOCK);
    // dw first: it reads dy, which dx may overwrite.
    let shader = SHADER.for_gpu(rec.gpu());
    rec.dispatch(&shader, "backward_dw_partials", &params, &bindings, grid_1d(tiles * blocks))?;
    rec.dispatch(&shader, "backward_dw_total", &params, &bindings, grid_1d(tiles))?;
    rec.dispatch(&shader, "backward_dx", &params, &bindings, grid_1d(rows))
}

/// The plain-Rust reference (f64).
pub mod reference {
    /// (y, rstd) for `x` `[rows, dim]` and `w` `[dim]`.
    pub fn forward(x: &[f64], w: &[f64], rows: usize, dim: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; rows * dim];
        let mut rstd = vec![0.0; rows];
        for row in 0..rows {
            let xs = &x[row * dim..(row + 1) * dim];
            let r = 1.0 / (xs.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
            rstd[row] = r;
            for (j, out) in y[row * dim..(row + 1) * dim].iter_mut().enumerate() {
                *out = w[j] * xs[j] * r;
            }
        }
        (y, rstd)
    }

    /// (dx, dw) from dy, following docs/gradients.md.
    pub fn backward(
        dy: &[f64],
        x: &[f64],
        w: &[f64],
        rstd: &[f64],
        rows: usize,
        dim: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut dx = vec![0.0; rows * dim];
        let mut dw = vec![0.0; dim];
        for (row, &r) in rstd.iter().enumerate().take(rows) {
            let span = row * dim..(row + 1) * dim;
            let (xs, dys) = (&x[span.clone()], &dy[span.clone()]);
            let mean_gx = (0..dim).map(|j| dys[j] * w[j] * xs[j]).sum::<f64>() / dim as f64;
            for (j, out) in dx[span].iter_mut().enumerate() {
                *out = r * (dys[j] * w[j] - xs[j] * r * r * mean_gx);
                dw[j] += dys[j] * xs[j] * r;
            }
        }
        (dx, dw)
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let (rows, dim, eps) = (5, 7, 1e-5);
        let (x, r) = (randn(rows * dim, 1), randn(rows * dim, 2));
        let w: Vec<f64> = randn(dim, 3).iter().map(|v| 1.0 + 0.5 * v).collect();
        let (_, rstd) = forward(&x, &w, rows, dim, eps);
        let (dx, dw) = backward(&r, &x, &w, &rstd, rows, dim);
        let fd_x = finite_difference(&|x| weighted_sum(&r, &forward(x, &w, rows, dim, eps).0), &x, 1e-6);
        let fd_w = finite_difference(&|w| weighted_sum(&r, &forward(&x, w, rows, dim, eps).0), &w, 1e-6);
        assert_close("rmsnorm dx vs finite differences", &dx, &fd_x, 1e-6);
        assert_close("rmsnorm dw vs finite differences", &dw, &fd_w, 1e-6);
    }

    #[test]
    fn scratch_holds_one_partial_row_per_block_of_rows() {
        assert_eq!(super::scratch_len(1, 10), 10);
        assert_eq!(super::scratch_len(64, 10), 10);
        assert_eq!(super::scratch_len(65, 10), 20);
        assert_eq!(super::scratch_len(0, 10), 0);
    }
}
