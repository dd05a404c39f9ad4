//! SwiGLU gating: h = silu(a) * b with a = x W_gate^T and b = x W_up^T (the projections are matmuls).

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader};

pub const SHADER: Shader = Shader::new("swiglu", include_str!("../../shaders/swiglu.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { n })
}

/// h = silu(a) * b, element-wise over `a.len` values.
pub fn forward(rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, h: &GpuTensor) -> Result<()> {
    ensure!(
        a.len == b.len && a.len == h.len,
        "swiglu: a {}, b {}, h {} differ in length",
        a.len,
        b.len,
        h.len
    );
    let params = Params { n: a.len as u32, _pad: [0; 3] };
    rec.dispatch(&SHADER, "forward", &params, &[a, b, h], grid_1d((a.len as u32).div_ceil(256)))
}

/// da, db from dh (docs/gradients.md): da = dh b sigma(a) (1 + a (1 - sigma(a))), db = dh silu(a).
pub fn backward(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    dh: &GpuTensor,
    da: &GpuTensor,
    db: &GpuTensor,
) -> Result<()> {
    ensure!([b.len, dh.len, da.len, db.len].iter().all(|&l| l == a.len), "swiglu backward: lengths differ");
    let params = Params { n: a.len as u32, _pad: [0; 3] };
    rec.dispatch(&SHADER, "backward", &params, &[a, b, dh, da, db], grid_1d((a.len as u32).div_ceil(256)))
}

/// The plain-Rust reference (f64).
pub mod reference {
    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    pub fn forward(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(&x, &y)| x * sigmoid(x) * y).collect()
    }

    pub fn backward(a: &[f64], b: &[f64], dh: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let da = a.iter().zip(b).zip(dh).map(|((&x, &y), &g)| {
            let s = sigmoid(x);
            g * y * s * (1.0 + x * (1.0 - s))
        });
        let db = a.iter().zip(dh).map(|(&x, &g)| g * x * sigmoid(x));
        (da.collect(), db.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let n = 37;
        let (a, b, r) = (randn(n, 1), randn(n, 2), randn(n, 3));
        let (da, db) = backward(&a, &b, &r);
        let fd_a = finite_difference(&|x| weighted_sum(&r, &forward(x, &b)), &a, 1e-6);
        let fd_b = finite_difference(&|x| weighted_sum(&r, &forward(&a, x)), &b, 1e-6);
        assert_close("swiglu da vs finite differences", &da, &fd_a, 1e-6);
        assert_close("swiglu db vs finite differences", &db, &fd_b, 1e-6);
    }
}
