//! The stochastic residual state update of the cellular automaton: each cell's state moves by its MLP's
//! update only when the cell fires, `h_next = h + m(cell) * u` with `m(cell)` = 1 / fire_rate on a
//! Bernoulli(fire_rate) draw from the counter-based RNG and 0 otherwise. The 1 / fire_rate (as in inverted
//! dropout) keeps the expected update at `u`, so a model trained with a fire rate below 1 can be evaluated
//! with every cell firing. The mask is a pure function of (key, cell, step), so the backward pass
//! regenerates exactly the forward's mask instead of storing it.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader, WgslConst};
use crate::rng::{philox, unit_f32};

pub const SHADER: Shader = Shader::new("cell_update", include_str!("../../shaders/cell_update.wgsl"))
    .with_rng()
    .with_consts(&[("CELL_UPDATE_DOMAIN", WgslConst::U32(CELL_UPDATE_DOMAIN))]);

/// The last Philox counter word of the fire mask, keeping its stream apart from other uses of a key.
/// Prepended to the shader.
pub const CELL_UPDATE_DOMAIN: u32 = 6;

/// Whether `cell` fires (updates) at `step`: the mask on the host, bit-identical to the shader's.
/// A fire rate of 1 makes every cell fire, 0 none.
pub fn keep(key: u64, cell: u32, step: u32, fire_rate: f32) -> bool {
    unit_f32(philox(key, [cell, step, 0, CELL_UPDATE_DOMAIN])[0]) < fire_rate
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    cells: u32,
    channels: u32,
    key_lo: u32,
    key_hi: u32,
    step: u32,
    fire_rate: f32,
    _pad: [u32; 2],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { cells, channels, key_lo, key_hi, step, fire_rate })
}

fn params(
    what: &str,
    tensors: &[(&str, &GpuTensor)],
    cells: u32,
    channels: u32,
    key: u64,
    step: u32,
    fire_rate: f32,
) -> Result<Params> {
    let len = u64::from(cells) * u64::from(channels);
    ensure!(
        u32::try_from(len).is_ok(),
        "{what}: {cells} cells x {channels} channels exceed the u32 index range"
    );
    for (name, t) in tensors {
        ensure!(t.len as u64 == len, "{what}: {name} has {} values, expected {cells} x {channels}", t.len);
    }
    ensure!((0.0..=1.0).contains(&fire_rate), "{what}: fire rate {fire_rate} is outside [0, 1]");
    Ok(Params {
        cells,
        channels,
        key_lo: key as u32,
        key_hi: (key >> 32) as u32,
        step,
        fire_rate,
        _pad: [0; 2],
    })
}

fn workgroups(p: &Params) -> [u32; 3] {
    grid_1d((p.cells * p.channels).div_ceil(256))
}

/// h_next = h + m(cell) * u over `cells` rows of `channels` values. `h_next` may be the same tensor as
/// `h` (in place); `u` must be distinct from `h_next`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    rec: &mut Recorder,
    h: &GpuTensor,
    u: &GpuTensor,
    h_next: &GpuTensor,
    cells: u32,
    channels: u32,
    key: u64,
    step: u32,
    fire_rate: f32,
) -> Result<()> {
    let p = params(
        "cell update",
        &[("h", h), ("u", u), ("h_next", h_next)],
        cells,
        channels,
        key,
        step,
        fire_rate,
    )?;
    rec.dispatch(&SHADER, "forward", &p, &[h, u, h_next], workgroups(&p))
}

/// dh = dh_next (the identity path) and du = m(cell) * dh_next, both written (not accumulated), with the
/// forward's (key, step, fire_rate). `dh` may be the same tensor as `dh_next`; `du` must be distinct.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rec: &mut Recorder,
    dh_next: &GpuTensor,
    dh: &GpuTensor,
    du: &GpuTensor,
    cells: u32,
    channels: u32,
    key: u64,
    step: u32,
    fire_rate: f32,
) -> Result<()> {
    let p = params(
        "cell update backward",
        &[("dh_next", dh_next), ("dh", dh), ("du", du)],
        cells,
        channels,
        key,
        step,
        fire_rate,
    )?;
    rec.dispatch(&SHADER, "backward", &p, &[dh_next, dh, du], workgroups(&p))
}

/// The plain-Rust reference (f64), with the mask from [`keep`] scaled by 1 / fire_rate.
pub mod reference {
    fn masks(cells: usize, key: u64, step: u32, fire_rate: f32) -> impl Iterator<Item = f64> {
        let gain = 1.0 / f64::from(fire_rate);
        (0..cells).map(move |cell| if super::keep(key, cell as u32, step, fire_rate) { gain } else { 0.0 })
    }

    pub fn forward(
        h: &[f64],
        u: &[f64],
        cells: usize,
        channels: usize,
        key: u64,
        step: u32,
        fire_rate: f32,
    ) -> Vec<f64> {
        assert!(h.len() == cells * channels && u.len() == cells * channels, "cell update: lengths");
        let mut out = h.to_vec();
        for (cell, m) in masks(cells, key, step, fire_rate).enumerate() {
            let row = cell * channels..(cell + 1) * channels;
            for (o, &v) in out[row.clone()].iter_mut().zip(&u[row]) {
                *o += m * v;
            }
        }
        out
    }

    pub fn backward(
        dh_next: &[f64],
        cells: usize,
        channels: usize,
        key: u64,
        step: u32,
        fire_rate: f32,
    ) -> (Vec<f64>, Vec<f64>) {
        assert!(dh_next.len() == cells * channels, "cell update backward: lengths");
        let mut du = dh_next.to_vec();
        for (cell, m) in masks(cells, key, step, fire_rate).enumerate() {
            du[cell * channels..(cell + 1) * channels].iter_mut().for_each(|g| *g *= m);
        }
        (dh_next.to_vec(), du)
    }
}

#[cfg(test)]
mod tests {
    use super::keep;
    use super::reference::*;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let (cells, channels, key, step, fire_rate) = (11, 5, 0xce11, 3, 0.5);
        let fired = (0..cells as u32).filter(|&c| keep(key, c, step, fire_rate)).count();
        assert!(fired > 0 && fired < cells, "the check needs both firing and resting cells ({fired})");
        let n = cells * channels;
        let (h, u, r) = (randn(n, 1), randn(n, 2), randn(n, 3));
        let (dh, du) = backward(&r, cells, channels, key, step, fire_rate);
        let loss =
            |h: &[f64], u: &[f64]| weighted_sum(&r, &forward(h, u, cells, channels, key, step, fire_rate));
        let fd_h = finite_difference(&|x| loss(x, &u), &h, 1e-6);
        let fd_u = finite_difference(&|x| loss(&h, x), &u, 1e-6);
        assert_close("cell update dh vs finite differences", &dh, &fd_h, 1e-6);
        assert_close("cell update du vs finite differences", &du, &fd_u, 1e-6);
    }

    #[test]
    fn fire_rate_one_fires_every_cell_and_zero_none() {
        assert!((0..1000).all(|c| keep(7, c, 2, 1.0)));
        assert!((0..1000).all(|c| !keep(7, c, 2, 0.0)));
    }
}
