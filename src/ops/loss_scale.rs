//! Dynamic loss scaling for half-precision training (as PyTorch's `GradScaler`), on the GPU: the loss
//! gradient is multiplied by a scale S so that small gradients stay representable in f16, the optimiser
//! divides S out again and skips a step whose gradients overflowed, and [`LossScale::update`] then
//! halves S after an overflow and doubles it after [`GROWTH_INTERVAL`] clean steps. The state lives in a
//! 4-element tensor ([`LossScale`]) that the loss and optimiser kernels read, so no step waits for the
//! host.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{Gpu, GpuTensor, Recorder, Shader, WgslConst};

pub const SHADER: Shader = Shader::new("loss_scale", include_str!("../../shaders/loss_scale.wgsl"))
    .with_consts(&[("MAX_SCALE", WgslConst::F32(MAX_SCALE))]);

/// Clean steps after which the scale doubles (PyTorch's default).
pub const GROWTH_INTERVAL: u32 = 2000;
/// The largest scale (prepended to the shader): 2^24 leaves headroom below f32's range for the squared
/// norm.
pub const MAX_SCALE: f32 = 16_777_216.0;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    interval: u32,
    _pad: [u32; 3],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { interval })
}

/// The GPU state: the scale (f32 bits), clean steps since the last overflow, steps skipped in all, and
/// whether the last step was skipped.
pub struct LossScale {
    pub state: GpuTensor,
    interval: u32,
}

/// What [`LossScale::read`] finds, and what a checkpoint keeps.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScaleState {
    pub scale: f32,
    pub clean_steps: u32,
    pub skipped: u32,
    pub last_skipped: bool,
}

impl LossScale {
    /// A scale starting at `initial` (a power of two keeps the scaling exact), growing every `interval`
    /// clean steps.
    pub fn new(gpu: &Gpu, initial: f32, interval: u32) -> Result<Self> {
        ensure!(
            initial.is_finite() && initial >= 1.0,
            "the initial loss scale must be a number of at least 1, got {initial}"
        );
        ensure!(interval >= 1, "the loss scale's growth interval must be at least 1 step");
        let state = gpu.upload(&[initial.to_bits(), 0, 0, 0], "loss scale")?;
        Ok(Self { state, interval })
    }

    /// The scale as the kernels read it: element 0 of the state, as an f32.
    pub fn scale(&self) -> GpuTensor {
        self.state.slice(0, 1)
    }

    /// Whether the last step was skipped (1) or not (0), for per-step histories.
    pub fn last_skipped(&self) -> GpuTensor {
        self.state.slice(3, 1)
    }

    /// Reads the state back (waits for the GPU).
    pub fn read(&self, gpu: &Gpu) -> Result<ScaleState> {
        let s: Vec<u32> = gpu.read(&self.state)?;
        Ok(ScaleState {
            scale: f32::from_bits(s[0]),
            clean_steps: s[1],
            skipped: s[2],
            last_skipped: s[3] != 0,
        })
    }

    /// Continues from a saved state (a resumed run).
    pub fn restore(&self, gpu: &Gpu, s: &ScaleState) -> Result<()> {
        ensure!(s.scale.is_finite() && s.scale >= 1.0, "a saved loss scale of {} is not a scale", s.scale);
        gpu.write(&self.state, &[s.scale.to_bits(), s.clean_steps, s.skipped, u32::from(s.last_skipped)]);
        Ok(())
    }

    /// Records the update after an optimiser step that read `norm_sq` (the squared norm of the scaled
    /// gradients), which becomes the unscaled gradients' where the step was not skipped.
    pub fn update(&self, rec: &mut Recorder, norm_sq: &GpuTensor) -> Result<()> {
        ensure!(norm_sq.len >= 1, "loss scale: norm_sq {} is empty", norm_sq.label);
        let params = Params { interval: self.interval, _pad: [0; 3] };
        rec.dispatch(&SHADER, "update", &params, &[&self.state, norm_sq], [1, 1, 1])
    }
}

/// The plain-Rust reference of one update: the new state and the norm as logged.
pub fn reference_update(s: ScaleState, norm_sq: f32, interval: u32) -> (ScaleState, f32) {
    if !norm_sq.is_finite() {
        let next = ScaleState {
            scale: (s.scale * 0.5).max(1.0),
            clean_steps: 0,
            skipped: s.skipped + 1,
            last_skipped: true,
        };
        return (next, norm_sq);
    }
    let mut clean = s.clean_steps + 1;
    let mut scale = s.scale;
    if clean >= interval {
        scale = (scale * 2.0).min(MAX_SCALE);
        clean = 0;
    }
    let next = ScaleState { scale, clean_steps: clean, skipped: s.skipped, last_skipped: false };
    (next, norm_sq / (s.scale * s.scale))
}
