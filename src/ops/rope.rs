//! Rotary position embedding (RoPE) for the queries and keys, in the rotate-half convention of Hugging
//! Face Llama so that checkpoints load in `transformers` unchanged. Rows of `[rows, heads * head_dim]`
//! are tokens at position `row % seq_len`; pair (i, i + D/2) of every head turns by
//! a_i = pos * theta^(-2i/D), and the backward pass turns the gradient back by -a_i.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader};

pub const SHADER: Shader = Shader::new("rope", include_str!("../../shaders/rope.wgsl"));

/// Largest head dimension: the inverse frequencies travel in the parameter struct.
pub const MAX_HEAD_DIM: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    row_stride: u32,
    _pad: [u32; 3],
    inv_freq: [f32; MAX_HEAD_DIM as usize / 2],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { rows, seq_len, heads, head_dim, row_stride, inv_freq })
}

/// The inverse frequencies 1 / theta^(2i/D), i < D/2, in f32 exactly as Hugging Face computes them
/// (`1.0 / (base ** (arange(0, D, 2).float() / D))`). Computed here rather than in the shader because
/// WGSL's `pow` is only accurate to a few ulp, an error the angle multiplies by the position.
pub fn inverse_frequencies(head_dim: u32, theta: f32) -> Vec<f32> {
    (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect()
}

/// What RoPE turns: `rows` tokens of `heads` heads of `head_dim` values, a token's position its row modulo
/// `seq_len`, and the base `theta` of the angles.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub rows: u32,
    pub seq_len: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub theta: f32,
}

/// Dispatches `entry` over every pair of `rows x heads x head_dim` values, each tensor holding rows of
/// `parts` such blocks (1, or 3 for q, k and v side by side).
fn launch(
    rec: &mut Recorder,
    entry: &str,
    tensors: &[&GpuTensor],
    parts: u32,
    shape: &RopeShape,
) -> Result<()> {
    let RopeShape { rows, seq_len, heads, head_dim, theta } = *shape;
    ensure!(
        head_dim > 0 && head_dim.is_multiple_of(2) && head_dim <= MAX_HEAD_DIM,
        "rope: head_dim {head_dim} must be even and in 2..={MAX_HEAD_DIM}"
    );
    ensure!(seq_len > 0, "rope: seq_len must be positive");
    ensure!(theta > 0.0 && theta.is_finite(), "rope: theta {theta} must be a positive number");
    let elements = rows as usize * heads as usize * head_dim as usize;
    let len = elements * parts as usize;
    ensure!(
        len <= u32::MAX as usize,
        "rope: {rows} x {parts} x {heads} x {head_dim} elements exceed u32 indexing"
    );
    for t in tensors {
        ensure!(
            t.len == len,
            "rope {entry}: {} holds {} elements; rows {rows} x {parts} x heads {heads} x head_dim {head_dim} = {len}",
            t.label,
            t.len
        );
    }
    let mut params = Params {
        rows,
        seq_len,
        heads,
        head_dim,
        row_stride: parts * heads * head_dim,
        _pad: [0; 3],
        inv_freq: [0.0; MAX_HEAD_DIM as usize / 2],
    };
    for (slot, f) in params.inv_freq.iter_mut().zip(inverse_frequencies(head_dim, theta)) {
        *slot = f;
    }
    let pairs = (elements / 2) as u32;
    rec.dispatch(&SHADER, entry, &params, tensors, grid_1d(pairs.div_ceil(256)))
}

/// Which way to turn: forward y = RoPE(x), or backward, dx from dy by the inverse rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

impl Direction {
    fn entry(self, qk: bool) -> &'static str {
        match (self, qk) {
            (Direction::Forward, false) => "forward",
            (Direction::Backward, false) => "backward",
            (Direction::Forward, true) => "forward_qk",
            (Direction::Backward, true) => "backward_qk",
        }
    }
}

/// `dst` = `src` turned by RoPE in `direction`, for `src` [rows, heads * head_dim]; `dst` may be `src`
/// (in place).
pub fn turn(
    rec: &mut Recorder,
    direction: Direction,
    src: &GpuTensor,
    dst: &GpuTensor,
    shape: &RopeShape,
) -> Result<()> {
    launch(rec, direction.entry(false), &[src, dst], 1, shape)
}

/// The queries and keys (or their gradients) of `qkv` `[rows, 3 * heads * head_dim]` (each row a token's
/// queries, keys and values, as the fused projection writes them) both turned in place in `direction`,
/// in one dispatch: each angle's cosine and sine serve both. The values are left alone.
pub fn turn_qk(rec: &mut Recorder, direction: Direction, qkv: &GpuTensor, shape: &RopeShape) -> Result<()> {
    launch(rec, direction.entry(true), &[qkv], 3, shape)
}

/// The plain-Rust reference (f64).
pub mod reference {
    use super::Direction;

    /// Every pair turned by its angle, backward by minus its angle.
    pub fn turn(
        x: &[f64],
        direction: Direction,
        rows: usize,
        seq_len: usize,
        heads: usize,
        head_dim: usize,
        theta: f64,
    ) -> Vec<f64> {
        let sign = match direction {
            Direction::Forward => 1.0,
            Direction::Backward => -1.0,
        };
        let half = head_dim / 2;
        let mut y = vec![0.0; x.len()];
        for row in 0..rows {
            let pos = (row % seq_len) as f64;
            for head in 0..heads {
                let base = (row * heads + head) * head_dim;
                for i in 0..half {
                    let angle = pos * theta.powf(-((2 * i) as f64) / head_dim as f64);
                    let (s, c) = (sign * angle.sin(), angle.cos());
                    let (a, b) = (x[base + i], x[base + i + half]);
                    y[base + i] = a * c - b * s;
                    y[base + i + half] = b * c + a * s;
                }
            }
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::reference::turn;
    use super::Direction::{Backward, Forward};
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let (rows, seq_len, heads, head_dim, theta) = (2 * 3, 3, 2, 6, 1e4);
        let n = rows * heads * head_dim;
        let (x, r) = (randn(n, 1), randn(n, 2));
        let dx = turn(&r, Backward, rows, seq_len, heads, head_dim, theta);
        let fd = finite_difference(
            &|x| weighted_sum(&r, &turn(x, Forward, rows, seq_len, heads, head_dim, theta)),
            &x,
            1e-6,
        );
        assert_close("rope dx vs finite differences", &dx, &fd, 1e-6);
    }

    #[test]
    fn inverse_frequencies_follow_theta_powers() {
        let f = super::inverse_frequencies(8, 1e4);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        for (i, &v) in f.iter().enumerate() {
            let want = 1e4f64.powf(-((2 * i) as f64) / 8.0);
            assert!((f64::from(v) - want).abs() <= 2e-7 * want, "inv_freq[{i}] = {v}, want {want}");
        }
    }
}
