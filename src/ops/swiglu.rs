//! SwiGLU gating: h = silu(a) * b with a = x W_gate^T and b = x W_up^T, both from one product
//! x [W_gate; W_up]^T: `gate_up` `[rows, 2 * hidden]` holds a and b side by side in each row.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader};

pub const SHADER: Shader = Shader::new("swiglu", include_str!("../../shaders/swiglu.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    hidden: u32,
    _pad: [u32; 2],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { n, hidden })
}

/// The parameters for h of `h_len` values in rows of `hidden`, checking `gate_up` beside it.
fn params(gate_up: &GpuTensor, h_len: usize, hidden: u32) -> Result<Params> {
    ensure!(
        hidden > 0 && h_len.is_multiple_of(hidden as usize),
        "swiglu: {h_len} values are not rows of {hidden}"
    );
    ensure!(
        gate_up.len == 2 * h_len,
        "swiglu: gate_up ({}) holds {} values, twice h's {h_len} expected",
        gate_up.label,
        gate_up.len
    );
    ensure!(gate_up.len <= u32::MAX as usize, "swiglu: {} values exceed u32 indexing", gate_up.len);
    Ok(Params { n: h_len as u32, hidden, _pad: [0; 2] })
}

/// h = silu(a) * b, element-wise, for a and b side by side in each row of `gate_up` `[rows, 2 * hidden]`.
pub fn forward(rec: &mut Recorder, gate_up: &GpuTensor, h: &GpuTensor, hidden: u32) -> Result<()> {
    let params = params(gate_up, h.len, hidden)?;
    rec.dispatch(&SHADER, "forward", &params, &[gate_up, h], grid_1d(params.n.div_ceil(256)))
}

/// da, db from dh (docs/gradients.md), into `d_gate_up` in `gate_up`'s layout:
/// da = dh b sigma(a) (1 + a (1 - sigma(a))), db = dh silu(a).
pub fn backward(
    rec: &mut Recorder,
    gate_up: &GpuTensor,
    dh: &GpuTensor,
    d_gate_up: &GpuTensor,
    hidden: u32,
) -> Result<()> {
    let params = params(gate_up, dh.len, hidden)?;
    ensure!(
        d_gate_up.len == gate_up.len,
        "swiglu backward: d_gate_up holds {} values, gate_up {}",
        d_gate_up.len,
        gate_up.len
    );
    rec.dispatch(&SHADER, "backward", &params, &[gate_up, dh, d_gate_up], grid_1d(params.n.div_ceil(256)))
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
