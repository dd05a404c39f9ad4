//! The NCA's neighbourhood convolutions, trainable: a cell's perception gathers its neighbourhood.
//!
//! - Causal: a 1-D depthwise convolution over each sequence, for the language model whose token
//!   positions are cells; cell t sees itself and the `width - 1` cells before it (positions before the
//!   sequence start contribute 0). x, y: [batch * seq_len, channels]; kernel: [width, channels], where
//!   `kernel[j][c]` weighs `x[t - j][c]`; bias: `[channels]`.
//!   `y[t][c]` = `bias[c]` + sum_{j < width, t - j >= 0} `kernel[j][c]` `x[t - j][c]`.
//! - Torus: the data-generating NCA's 3x3 convolution on a periodic grid, so a rule's weights can be
//!   fitted by gradient descent. HWIO weights as in `src/nca/rule.rs`: weight[(k * cin + ci) * cout + co]
//!   for neighbour k = 3 dy + dx, nb_k(y, x) = ((y + dy - 1) mod grid, (x + dx - 1) mod grid).
//!   x: [grids * grid * grid, cin], y: [grids * grid * grid, cout];
//!   `y[cell][co]` = `bias[co]` + sum_k sum_ci `weight[k][ci][co]` `x[nb_k(cell)][ci]`.
//!
//! Gradients. Both convolutions are linear in x and in the weights, so each partial derivative is the
//! coefficient it multiplies, summed over every output it reaches:
//! - Causal: `x[s][c]` reaches `y[s + j][c]` through `kernel[j][c]` for every j < width with s + j
//!   still in the sequence, so `dx[t][c]` = sum_j `kernel[j][c]` `dy[t + j][c]` (t + j < seq_len);
//!   `dkernel[j][c]` = sum_t `dy[t][c]` `x[t - j][c]` (t - j >= 0 in the same sequence);
//!   `dbias[c]` = sum_t `dy[t][c]`.
//! - Torus: `x[cell][ci]` reaches `y[cell'][co]` through `weight[k][ci][co]` whenever
//!   nb_k(cell') = cell, that is cell' = cell shifted by (1 - dy, 1 - dx) mod grid (the neighbour
//!   relation inverted), so `dx[cell][ci]` = sum_k sum_co `weight[k][ci][co]` `dy[cell'][co]`;
//!   `dweight[k][ci][co]` = sum_cells `dy[cell][co]` `x[nb_k(cell)][ci]`; dbias = column sums of dy. On
//!   grids smaller than 3 several k name the same neighbour; the sums count each k separately, as the
//!   forward pass does.
//!
//! Weight and bias gradients are deterministic two-stage sums over all rows through a scratch tensor
//! (blocks of 64 rows per gradient column, then the blocks in order); no f32 atomics.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use super::Accumulate;
use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader, WgslConst};

pub const SHADER: Shader = Shader::new("conv", include_str!("../../shaders/conv.wgsl")).with_consts(&[
    ("WG", WgslConst::U32(WORKGROUP)),
    ("ROWS_PER_BLOCK", WgslConst::U32(ROWS_PER_BLOCK)),
    ("ACCUMULATE_DW", WgslConst::U32(Accumulate::DW)),
    ("ACCUMULATE_DX", WgslConst::U32(Accumulate::DX)),
]);

/// Rows summed per workgroup in the first stage of the gradient sums.
const ROWS_PER_BLOCK: u32 = 64;
/// Invocations per workgroup.
const WORKGROUP: u32 = 256;

/// Shape of a causal convolution: `batch` sequences of `seq_len` cells with `channels` each, and a kernel
/// reaching `width` cells (itself included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CausalConvShape {
    pub batch: u32,
    pub seq_len: u32,
    pub channels: u32,
    pub width: u32,
}

/// Shape of a torus convolution: `grids` periodic `grid` x `grid` grids, `cin` channels in, `cout` out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TorusConvShape {
    pub grids: u32,
    pub grid: u32,
    pub cin: u32,
    pub cout: u32,
}

/// Mirrors `Params` in the shader; the causal convolution uses `cin` = `cout` = channels, the torus one
/// ignores `seq_len` and `width`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    seq_len: u32,
    grid: u32,
    cin: u32,
    cout: u32,
    width: u32,
    weight_len: u32,
    accumulate: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { rows, seq_len, grid, cin, cout, width, weight_len, accumulate })
}

/// Elements as a u32 for shader indexing, or a clear error.
fn elements(what: &str, factors: &[u32]) -> Result<u32> {
    let product = factors.iter().try_fold(1u32, |acc, &f| acc.checked_mul(f));
    product.ok_or_else(|| anyhow::anyhow!("{what}: {factors:?} elements exceed u32 indexing"))
}

fn check_len(what: &str, tensor: &GpuTensor, want: u32) -> Result<()> {
    ensure!(tensor.len == want as usize, "{what} has {} elements, the shape needs {want}", tensor.len);
    Ok(())
}

/// Scratch for a gradient over `columns` columns of `rows` rows: one partial row per block of 64 rows.
fn grad_scratch_len(rows: usize, columns: usize) -> usize {
    rows.div_ceil(ROWS_PER_BLOCK as usize) * columns
}

impl CausalConvShape {
    fn params(&self, accumulate: bool) -> Result<Params> {
        let CausalConvShape { batch, seq_len, channels, width } = *self;
        ensure!(
            seq_len > 0 && channels > 0 && width > 0,
            "causal conv: seq_len {seq_len}, channels {channels} and width {width} must be positive"
        );
        let rows = elements("causal conv rows", &[batch, seq_len])?;
        elements("causal conv activations", &[rows, channels])?;
        // The gradient columns (kernel, then bias) also index the scratch rows.
        elements("causal conv gradient columns", &[width + 1, channels])?;
        Ok(Params {
            rows,
            seq_len,
            grid: 0,
            cin: channels,
            cout: channels,
            width,
            weight_len: width * channels,
            accumulate: u32::from(accumulate),
        })
    }
}

impl TorusConvShape {
    fn params(&self, accumulate: bool) -> Result<Params> {
        let TorusConvShape { grids, grid, cin, cout } = *self;
        ensure!(
            grid > 0 && cin > 0 && cout > 0,
            "torus conv: grid {grid}, cin {cin} and cout {cout} must be positive"
        );
        let rows = elements("torus conv cells", &[grids, grid, grid])?;
        elements("torus conv input", &[rows, cin])?;
        elements("torus conv output", &[rows, cout])?;
        let weight_len = elements("torus conv weight", &[9, cin, cout])?;
        ensure!(weight_len.checked_add(cout).is_some(), "torus conv: gradient columns exceed u32 indexing");
        Ok(Params {
            rows,
            seq_len: 0,
            grid,
            cin,
            cout,
            width: 0,
            weight_len,
            accumulate: u32::from(accumulate),
        })
    }
}

/// Elements of the scratch tensor [`causal_backward`] needs (or more).
pub fn causal_scratch_len(shape: &CausalConvShape) -> usize {
    let rows = shape.batch as usize * shape.seq_len as usize;
    grad_scratch_len(rows, (shape.width as usize + 1) * shape.channels as usize)
}

/// Elements of the scratch tensor [`torus_backward`] needs (or more).
pub fn torus_scratch_len(shape: &TorusConvShape) -> usize {
    let rows = shape.grids as usize * shape.grid as usize * shape.grid as usize;
    grad_scratch_len(rows, (9 * shape.cin as usize + 1) * shape.cout as usize)
}

/// y = the causal convolution of `x` (module docs). `y` must not alias `x`.
pub fn causal_forward(
    rec: &mut Recorder,
    x: &GpuTensor,
    kernel: &GpuTensor,
    bias: &GpuTensor,
    y: &GpuTensor,
    shape: &CausalConvShape,
) -> Result<()> {
    let params = shape.params(false)?;
    let activations = params.rows * params.cin;
    check_len("causal conv forward: x", x, activations)?;
    check_len("causal conv forward: y", y, activations)?;
    check_len("causal conv forward: kernel", kernel, params.weight_len)?;
    check_len("causal conv forward: bias", bias, params.cout)?;
    rec.dispatch(
        &SHADER,
        "causal_forward",
        &params,
        &[x, kernel, bias, y],
        grid_1d(activations.div_ceil(WORKGROUP)),
    )
}

/// dx and dkernel, dbias from dy (module docs), each written or added to as `accumulate` says (`dw` for
/// dkernel and dbias). `scratch` holds [`causal_scratch_len`] elements or more. `dx` must not alias `dy`
/// or `x`.
#[allow(clippy::too_many_arguments)]
pub fn causal_backward(
    rec: &mut Recorder,
    dy: &GpuTensor,
    x: &GpuTensor,
    kernel: &GpuTensor,
    dx: &GpuTensor,
    dkernel: &GpuTensor,
    dbias: &GpuTensor,
    scratch: &GpuTensor,
    shape: &CausalConvShape,
    accumulate: Accumulate,
) -> Result<()> {
    let mut params = shape.params(accumulate.dw)?;
    params.accumulate = accumulate.flags();
    let activations = params.rows * params.cin;
    for (what, tensor) in [("dy", dy), ("x", x), ("dx", dx)] {
        check_len(&format!("causal conv backward: {what}"), tensor, activations)?;
    }
    check_len("causal conv backward: kernel", kernel, params.weight_len)?;
    check_len("causal conv backward: dkernel", dkernel, params.weight_len)?;
    check_len("causal conv backward: dbias", dbias, params.cout)?;
    let needed = causal_scratch_len(shape);
    ensure!(
        scratch.len >= needed,
        "causal conv backward: scratch has {} elements, needs {needed}",
        scratch.len
    );
    ensure!(!dx.overlaps(dy) && !dx.overlaps(x), "causal conv backward: dx {} overlaps dy or x", dx.label);
    let bindings = [x, kernel, dbias, dy, dx, dkernel, scratch];
    record_backward(rec, "causal", &params, &bindings, params.rows * params.cin)
}

/// y = the 3x3 torus convolution of `x` (module docs). `y` must not alias `x`.
pub fn torus_forward(
    rec: &mut Recorder,
    x: &GpuTensor,
    weight: &GpuTensor,
    bias: &GpuTensor,
    y: &GpuTensor,
    shape: &TorusConvShape,
) -> Result<()> {
    let params = shape.params(false)?;
    check_len("torus conv forward: x", x, params.rows * params.cin)?;
    check_len("torus conv forward: y", y, params.rows * params.cout)?;
    check_len("torus conv forward: weight", weight, params.weight_len)?;
    check_len("torus conv forward: bias", bias, params.cout)?;
    let outputs = params.rows * params.cout;
    rec.dispatch(
        &SHADER,
        "torus_forward",
        &params,
        &[x, weight, bias, y],
        grid_1d(outputs.div_ceil(WORKGROUP)),
    )
}

/// dx (overwritten) and dweight, dbias (written, or added to when `accumulate`) from dy (module docs).
/// `scratch` holds [`torus_scratch_len`] elements or more. `dx` must not alias `dy` or `x`.
#[allow(clippy::too_many_arguments)]
pub fn torus_backward(
    rec: &mut Recorder,
    dy: &GpuTensor,
    x: &GpuTensor,
    weight: &GpuTensor,
    dx: &GpuTensor,
    dweight: &GpuTensor,
    dbias: &GpuTensor,
    scratch: &GpuTensor,
    shape: &TorusConvShape,
    accumulate: bool,
) -> Result<()> {
    let params = shape.params(accumulate)?;
    check_len("torus conv backward: dy", dy, params.rows * params.cout)?;
    check_len("torus conv backward: x", x, params.rows * params.cin)?;
    check_len("torus conv backward: dx", dx, params.rows * params.cin)?;
    check_len("torus conv backward: weight", weight, params.weight_len)?;
    check_len("torus conv backward: dweight", dweight, params.weight_len)?;
    check_len("torus conv backward: dbias", dbias, params.cout)?;
    let needed = torus_scratch_len(shape);
    ensure!(
        scratch.len >= needed,
        "torus conv backward: scratch has {} elements, needs {needed}",
        scratch.len
    );
    let bindings = [x, weight, dbias, dy, dx, dweight, scratch];
    record_backward(rec, "torus", &params, &bindings, params.rows * params.cin)
}

/// The three backward dispatches shared by both convolutions: gradient partials, their totals, then dx.
/// `bindings` follow the shader's list: x, weight, dbias, dy, dx, dweight, scratch.
fn record_backward(
    rec: &mut Recorder,
    op: &str,
    params: &Params,
    bindings: &[&GpuTensor],
    dx_len: u32,
) -> Result<()> {
    let columns = params.weight_len + params.cout;
    let tiles = columns.div_ceil(WORKGROUP);
    let blocks = params.rows.div_ceil(ROWS_PER_BLOCK);
    let partial_groups = tiles
        .checked_mul(blocks)
        .ok_or_else(|| anyhow::anyhow!("{op} conv backward: {tiles} x {blocks} workgroups overflow"))?;
    rec.dispatch(&SHADER, &format!("{op}_grad_partials"), params, bindings, grid_1d(partial_groups))?;
    rec.dispatch(&SHADER, "grad_total", params, bindings, grid_1d(tiles))?;
    rec.dispatch(&SHADER, &format!("{op}_backward_dx"), params, bindings, grid_1d(dx_len.div_ceil(WORKGROUP)))
}

/// The plain-Rust reference (f64).
pub mod reference {
    use super::{CausalConvShape, TorusConvShape};

    fn causal_dims(shape: &CausalConvShape) -> (usize, usize, usize, usize) {
        (shape.batch as usize, shape.seq_len as usize, shape.channels as usize, shape.width as usize)
    }

    pub fn causal_forward(x: &[f64], kernel: &[f64], bias: &[f64], shape: &CausalConvShape) -> Vec<f64> {
        let (batch, seq, ch, width) = causal_dims(shape);
        let mut y = vec![0.0; batch * seq * ch];
        for b in 0..batch {
            for t in 0..seq {
                let row = b * seq + t;
                for c in 0..ch {
                    let taps = (0..width.min(t + 1)).map(|j| kernel[j * ch + c] * x[(row - j) * ch + c]);
                    y[row * ch + c] = bias[c] + taps.sum::<f64>();
                }
            }
        }
        y
    }

    /// (dx, dkernel, dbias) from dy (module docs).
    pub fn causal_backward(
        dy: &[f64],
        x: &[f64],
        kernel: &[f64],
        shape: &CausalConvShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (batch, seq, ch, width) = causal_dims(shape);
        let mut dx = vec![0.0; batch * seq * ch];
        let mut dkernel = vec![0.0; width * ch];
        let mut dbias = vec![0.0; ch];
        for b in 0..batch {
            for t in 0..seq {
                let row = b * seq + t;
                for c in 0..ch {
                    let g = dy[row * ch + c];
                    dbias[c] += g;
                    // y[t] used x[t - j] through kernel[j]: send g back along each tap.
                    for j in 0..width.min(t + 1) {
                        dx[(row - j) * ch + c] += kernel[j * ch + c] * g;
                        dkernel[j * ch + c] += g * x[(row - j) * ch + c];
                    }
                }
            }
        }
        (dx, dkernel, dbias)
    }

    /// Index of neighbour k = 3 dy + dx of `cell`: ((y + dy - 1) mod grid, (x + dx - 1) mod grid).
    fn torus_neighbour(cell: usize, k: usize, grid: usize) -> usize {
        let area = grid * grid;
        let (base, local) = (cell - cell % area, cell % area);
        let yy = (local / grid + grid + k / 3 - 1) % grid;
        let xx = (local % grid + grid + k % 3 - 1) % grid;
        base + yy * grid + xx
    }

    fn torus_dims(shape: &TorusConvShape) -> (usize, usize, usize, usize) {
        let cells = shape.grids as usize * shape.grid as usize * shape.grid as usize;
        (cells, shape.grid as usize, shape.cin as usize, shape.cout as usize)
    }

    pub fn torus_forward(x: &[f64], weight: &[f64], bias: &[f64], shape: &TorusConvShape) -> Vec<f64> {
        let (cells, grid, cin, cout) = torus_dims(shape);
        let mut y = vec![0.0; cells * cout];
        for cell in 0..cells {
            let out = &mut y[cell * cout..(cell + 1) * cout];
            out.copy_from_slice(bias);
            for k in 0..9 {
                let nb = torus_neighbour(cell, k, grid);
                for ci in 0..cin {
                    let v = x[nb * cin + ci];
                    for (co, o) in out.iter_mut().enumerate() {
                        *o += weight[(k * cin + ci) * cout + co] * v;
                    }
                }
            }
        }
        y
    }

    /// (dx, dweight, dbias) from dy (module docs).
    pub fn torus_backward(
        dy: &[f64],
        x: &[f64],
        weight: &[f64],
        shape: &TorusConvShape,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (cells, grid, cin, cout) = torus_dims(shape);
        let mut dx = vec![0.0; cells * cin];
        let mut dweight = vec![0.0; 9 * cin * cout];
        let mut dbias = vec![0.0; cout];
        for cell in 0..cells {
            let g = &dy[cell * cout..(cell + 1) * cout];
            for (db, v) in dbias.iter_mut().zip(g) {
                *db += v;
            }
            // Scattered from the output's point of view; the GPU gathers the same terms per input.
            for k in 0..9 {
                let nb = torus_neighbour(cell, k, grid);
                for ci in 0..cin {
                    for (co, &gv) in g.iter().enumerate() {
                        let w = (k * cin + ci) * cout + co;
                        dx[nb * cin + ci] += weight[w] * gv;
                        dweight[w] += gv * x[nb * cin + ci];
                    }
                }
            }
        }
        (dx, dweight, dbias)
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::{causal_scratch_len, torus_scratch_len, CausalConvShape, TorusConvShape};
    use crate::ops::testing::*;

    fn check_causal_gradients(shape: CausalConvShape) {
        let CausalConvShape { batch, seq_len, channels, width } = shape;
        let n = (batch * seq_len * channels) as usize;
        let (x, r) = (randn(n, 1), randn(n, 2));
        let kernel = randn((width * channels) as usize, 3);
        let bias = randn(channels as usize, 4);
        let (dx, dk, db) = causal_backward(&r, &x, &kernel, &shape);
        let fd_x =
            finite_difference(&|x| weighted_sum(&r, &causal_forward(x, &kernel, &bias, &shape)), &x, 1e-6);
        let fd_k =
            finite_difference(&|k| weighted_sum(&r, &causal_forward(&x, k, &bias, &shape)), &kernel, 1e-6);
        let fd_b =
            finite_difference(&|b| weighted_sum(&r, &causal_forward(&x, &kernel, b, &shape)), &bias, 1e-6);
        assert_close("causal conv dx vs finite differences", &dx, &fd_x, 1e-6);
        assert_close("causal conv dkernel vs finite differences", &dk, &fd_k, 1e-6);
        assert_close("causal conv dbias vs finite differences", &db, &fd_b, 1e-6);
    }

    #[test]
    fn causal_reference_gradients_match_finite_differences() {
        // Width 4 > the first positions of each sequence; width 9 > the whole sequence.
        check_causal_gradients(CausalConvShape { batch: 2, seq_len: 7, channels: 3, width: 4 });
        check_causal_gradients(CausalConvShape { batch: 3, seq_len: 5, channels: 2, width: 9 });
    }

    #[test]
    fn causal_reference_sees_only_its_own_past() {
        let shape = CausalConvShape { batch: 2, seq_len: 4, channels: 1, width: 2 };
        let x = [1.0, 2.0, 3.0, 4.0, 10.0, 20.0, 30.0, 40.0];
        let y = causal_forward(&x, &[1.0, 0.5], &[0.25], &shape);
        // Row 4 starts the second sequence: it must not see row 3.
        assert_eq!(y, vec![1.25, 2.75, 4.25, 5.75, 10.25, 25.25, 40.25, 55.25]);
    }

    fn check_torus_gradients(shape: TorusConvShape) {
        let TorusConvShape { grids, grid, cin, cout } = shape;
        let cells = (grids * grid * grid) as usize;
        let x = randn(cells * cin as usize, 5);
        let r = randn(cells * cout as usize, 6);
        let weight = randn(9 * (cin * cout) as usize, 7);
        let bias = randn(cout as usize, 8);
        let (dx, dw, db) = torus_backward(&r, &x, &weight, &shape);
        let fd_x =
            finite_difference(&|x| weighted_sum(&r, &torus_forward(x, &weight, &bias, &shape)), &x, 1e-6);
        let fd_w =
            finite_difference(&|w| weighted_sum(&r, &torus_forward(&x, w, &bias, &shape)), &weight, 1e-6);
        let fd_b =
            finite_difference(&|b| weighted_sum(&r, &torus_forward(&x, &weight, b, &shape)), &bias, 1e-6);
        assert_close("torus conv dx vs finite differences", &dx, &fd_x, 1e-6);
        assert_close("torus conv dweight vs finite differences", &dw, &fd_w, 1e-6);
        assert_close("torus conv dbias vs finite differences", &db, &fd_b, 1e-6);
    }

    #[test]
    fn torus_reference_gradients_match_finite_differences() {
        check_torus_gradients(TorusConvShape { grids: 2, grid: 4, cin: 3, cout: 5 });
        check_torus_gradients(TorusConvShape { grids: 2, grid: 3, cin: 3, cout: 5 });
        // A 2x2 grid: neighbours -1 and +1 coincide, so each input is reached twice by some rows.
        check_torus_gradients(TorusConvShape { grids: 1, grid: 2, cin: 2, cout: 3 });
    }

    /// On one-hot (wrap-padded) states the dense convolution must equal the simulator's lookup-table
    /// convolution: conv bias plus, for each neighbour k, the table row of that neighbour's state.
    #[test]
    fn torus_reference_on_one_hot_states_equals_the_rule_table() {
        use crate::nca::rule::{Rule, TableLayout};
        use crate::nca::spec::NcaSpec;
        use crate::rng::derive_key;
        for wrap in [true, false] {
            let spec = NcaSpec { channel_wrap: wrap, states: 5, grid: 6, ..NcaSpec::default() };
            let mut rule = Rule::sample(&spec, derive_key(11, &[u64::from(wrap)]));
            // Non-zero biases, so the bias term is checked too.
            rule.conv_bias = to_f32(&randn(rule.conv_bias.len(), 12));
            let table = rule.table(&spec);
            let layout = TableLayout::new(&spec);
            let (g, n, c, cin) = (
                spec.grid as usize,
                spec.states as usize,
                spec.conv_channels as usize,
                spec.conv_inputs() as usize,
            );
            let grids = 2;
            let states = randint(grids * g * g, n as u32, 13);
            // Input channels [s(n-1), s0, ..., s(n-1), s0] with the wrap, [s0, ..., s(n-1)] without.
            let mut x = vec![0.0; states.len() * cin];
            for (cell, &s) in states.iter().enumerate() {
                let s = s as usize;
                let row = &mut x[cell * cin..(cell + 1) * cin];
                if wrap {
                    row[s + 1] = 1.0;
                    row[0] = f64::from(u8::from(s == n - 1));
                    row[n + 1] = f64::from(u8::from(s == 0));
                } else {
                    row[s] = 1.0;
                }
            }
            let shape =
                TorusConvShape { grids: grids as u32, grid: g as u32, cin: cin as u32, cout: c as u32 };
            let weight: Vec<f64> = rule.conv.iter().map(|&w| f64::from(w)).collect();
            let bias: Vec<f64> = rule.conv_bias.iter().map(|&b| f64::from(b)).collect();
            let got = torus_forward(&x, &weight, &bias, &shape);
            let lut = &table.data;
            for cell in 0..states.len() {
                let (base, local) = (cell - cell % (g * g), cell % (g * g));
                let (y, xc) = (local / g, local % g);
                for o in 0..c {
                    let mut want = f64::from(lut[layout.conv_bias + o]);
                    for k in 0..9 {
                        let yy = (y + g + k / 3 - 1) % g;
                        let xx = (xc + g + k % 3 - 1) % g;
                        let s = states[base + yy * g + xx] as usize;
                        want += f64::from(lut[(k * n + s) * c + o]);
                    }
                    let have = got[cell * c + o];
                    assert!((have - want).abs() < 1e-5, "wrap {wrap} cell {cell} o {o}: {have} vs {want}");
                }
            }
        }
    }

    #[test]
    fn scratch_holds_one_partial_row_per_block_of_rows() {
        let causal = CausalConvShape { batch: 3, seq_len: 130, channels: 37, width: 5 };
        assert_eq!(causal_scratch_len(&causal), 7 * 6 * 37);
        let torus = TorusConvShape { grids: 2, grid: 7, cin: 5, cout: 9 };
        assert_eq!(torus_scratch_len(&torus), 2 * (9 * 5 + 1) * 9);
    }
}
