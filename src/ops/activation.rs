//! Pointwise activations between the two matmuls of the per-cell MLP: ReLU, GELU (the tanh
//! approximation, PyTorch's `approximate="tanh"`) and SiLU, with their backward passes.

use anyhow::{bail, ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader};

pub const SHADER: Shader = Shader::new("activation", include_str!("../../shaders/activation.wgsl"));

/// The activation function of the cell MLP, named in configs as "relu", "gelu" or "silu".
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    /// The tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    Gelu,
    Silu,
}

impl Activation {
    const ALL: [Activation; 3] = [Activation::Relu, Activation::Gelu, Activation::Silu];

    pub fn parse(name: &str) -> Result<Self> {
        match Self::ALL.iter().find(|a| a.name() == name) {
            Some(&a) => Ok(a),
            None => bail!("unknown activation {name:?}; expected one of relu, gelu, silu"),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Silu => "silu",
        }
    }

    /// The selector of the shader's `act` parameter.
    fn code(self) -> u32 {
        match self {
            Activation::Relu => 0,
            Activation::Gelu => 1,
            Activation::Silu => 2,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    act: u32,
    _pad: [u32; 2],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { n, act })
}

fn params(len: usize, act: Activation) -> Result<Params> {
    ensure!(u32::try_from(len).is_ok(), "activation: {len} values exceed the u32 index range");
    Ok(Params { n: len as u32, act: act.code(), _pad: [0; 2] })
}

/// y = act(x) element-wise. `y` must be a different tensor from `x`: the backward pass needs `x`.
pub fn forward(rec: &mut Recorder, x: &GpuTensor, y: &GpuTensor, act: Activation) -> Result<()> {
    ensure!(x.len == y.len, "activation {}: x has {} values, y {}", act.name(), x.len, y.len);
    let p = params(x.len, act)?;
    rec.dispatch(&SHADER, "forward", &p, &[x, y], grid_1d(p.n.div_ceil(256)))
}

/// dx = dy * act'(x) element-wise. `dx` may be the same tensor as `dy` (in place).
pub fn backward(
    rec: &mut Recorder,
    x: &GpuTensor,
    dy: &GpuTensor,
    dx: &GpuTensor,
    act: Activation,
) -> Result<()> {
    ensure!(
        dy.len == x.len && dx.len == x.len,
        "activation {} backward: x {}, dy {}, dx {} differ in length",
        act.name(),
        x.len,
        dy.len,
        dx.len
    );
    let p = params(x.len, act)?;
    rec.dispatch(&SHADER, "backward", &p, &[x, dy, dx], grid_1d(p.n.div_ceil(256)))
}

/// The plain-Rust reference (f64), written with tanh directly so that it checks the shader's
/// sigmoid form of GELU rather than repeating it.
pub mod reference {
    use super::Activation;

    const GELU_K: f64 = 0.797_884_560_802_865_4; // sqrt(2 / pi)
    const GELU_C: f64 = 0.044_715;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn value(x: f64, act: Activation) -> f64 {
        match act {
            Activation::Relu => x.max(0.0),
            Activation::Gelu => 0.5 * x * (1.0 + (GELU_K * (x + GELU_C * x * x * x)).tanh()),
            Activation::Silu => x * sigmoid(x),
        }
    }

    fn derivative(x: f64, act: Activation) -> f64 {
        match act {
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Gelu => {
                let t = (GELU_K * (x + GELU_C * x * x * x)).tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_C * x * x)
            }
            Activation::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
        }
    }

    pub fn forward(x: &[f64], act: Activation) -> Vec<f64> {
        x.iter().map(|&v| value(v, act)).collect()
    }

    pub fn backward(x: &[f64], dy: &[f64], act: Activation) -> Vec<f64> {
        x.iter().zip(dy).map(|(&v, &g)| g * derivative(v, act)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::Activation;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let n = 37;
        // Kept at least 0.1 away from 0 so that no probe straddles ReLU's kink.
        let x: Vec<f64> = randn(n, 1).iter().map(|&v| v + 0.1f64.copysign(v)).collect();
        let r = randn(n, 2);
        for act in Activation::ALL {
            let dx = backward(&x, &r, act);
            let fd = finite_difference(&|x| weighted_sum(&r, &forward(x, act)), &x, 1e-6);
            assert_close(&format!("{} dx vs finite differences", act.name()), &dx, &fd, 1e-6);
        }
    }

    #[test]
    fn reference_values_match_pytorch() {
        // torch.nn.functional.gelu(x, approximate="tanh") and silu at 1 and -2.
        let gelu = forward(&[1.0, -2.0], Activation::Gelu);
        let silu = forward(&[1.0, -2.0], Activation::Silu);
        assert_close("gelu values", &gelu, &[0.841_191_990_608_276_8, -0.045_402_305_912_224_94], 1e-12);
        assert_close("silu values", &silu, &[0.731_058_578_630_004_9, -0.238_405_844_044_235_1], 1e-12);
    }

    #[test]
    fn names_round_trip_and_unknown_names_fail() {
        for act in Activation::ALL {
            assert_eq!(Activation::parse(act.name()).unwrap(), act);
            let json = serde_json::to_string(&act).unwrap();
            assert_eq!(json, format!("\"{}\"", act.name()));
            assert_eq!(serde_json::from_str::<Activation>(&json).unwrap(), act);
        }
        let err = Activation::parse("tanh").unwrap_err().to_string();
        assert!(err.contains("tanh") && err.contains("gelu"), "{err}");
    }
}
