//! The optimiser: one Adam or AdamW step with PyTorch semantics (docs/gradients.md, "Optimiser"), with
//! global-norm clipping folded in. The squared gradient norm arrives as a 1-element GPU tensor (from
//! `reduce::sum_squares` over the whole gradient buffer), so a step needs no host round-trip.
//! [`step`] updates one tensor; [`step_all`] every tensor of a buffer in one dispatch; [`Plan`] every
//! tensor of a model, whose roles may span several buffers, and measures its gradient norm.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use super::reduce;
use crate::gpu::{grid_1d, Gpu, GpuTensor, Recorder, Role, Shader};

pub const SHADER: Shader = Shader::new("adamw", include_str!("../../shaders/adamw.wgsl"));

/// Hyperparameters of one step.
///
/// Clipping: `clip = min(1, max_norm / (sqrt(norm_sq) + 1e-6))` when `max_norm > 0`, else 1, and the
/// gradient used is `g = clip * grad * grad_scale`. `decoupled`: AdamW (`p -= lr * wd * p`, then the Adam
/// step); otherwise Adam with an L2 penalty (`g += wd * p` before the moments). `step` is t >= 1, for the
/// bias corrections.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decoupled: bool,
    pub max_norm: f32,
    pub grad_scale: f32,
    pub step: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: u32,
    max_norm: f32,
    grad_scale: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    scaled: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params {
        n,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled,
        max_norm,
        grad_scale,
        bias_correction1,
        bias_correction2,
        scaled
    })
}

/// 1 - beta^t in f64: in f32 it would lose most of its digits for beta close to 1 and small t.
fn bias_correction(beta: f32, step: u64) -> f32 {
    (1.0 - f64::from(beta).powf(step as f64)) as f32
}

/// The common length of a parameter tensor, its gradient and its moments.
fn check_lengths(param: &GpuTensor, grad: &GpuTensor, m: &GpuTensor, v: &GpuTensor) -> Result<usize> {
    let n = param.len;
    ensure!(
        grad.len == n && m.len == n && v.len == n,
        "adamw: param {} ({n}), grad {}, m {}, v {} differ in length",
        param.label,
        grad.len,
        m.len,
        v.len
    );
    Ok(n)
}

fn check_hyperparameters(p: &AdamParams) -> Result<()> {
    ensure!(p.step >= 1, "adamw: step is {}, must start at 1", p.step);
    ensure!(
        (0.0..1.0).contains(&p.beta1) && (0.0..1.0).contains(&p.beta2),
        "adamw: betas ({}, {}) must lie in [0, 1)",
        p.beta1,
        p.beta2
    );
    Ok(())
}

fn uniform(p: &AdamParams, n: u32) -> Params {
    Params {
        n,
        lr: p.lr,
        beta1: p.beta1,
        beta2: p.beta2,
        eps: p.eps,
        weight_decay: p.weight_decay,
        decoupled: u32::from(p.decoupled),
        max_norm: p.max_norm,
        grad_scale: p.grad_scale,
        bias_correction1: bias_correction(p.beta1, p.step),
        bias_correction2: bias_correction(p.beta2, p.step),
        scaled: 0,
    }
}

/// Updates `param`, `m` and `v` in place from `grad` (left unchanged); reads `norm_sq[0]`.
pub fn step(
    rec: &mut Recorder,
    param: &GpuTensor,
    grad: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    norm_sq: &GpuTensor,
    p: &AdamParams,
) -> Result<()> {
    let n = check_lengths(param, grad, m, v)?;
    ensure!(n <= u32::MAX as usize, "adamw: {} holds {n} values, more than 2^32 - 1", param.label);
    ensure!(norm_sq.len >= 1, "adamw: norm_sq {} is empty", norm_sq.label);
    check_hyperparameters(p)?;
    let params = uniform(p, n as u32);
    rec.dispatch(&SHADER, "step", &params, &[param, grad, m, v, norm_sq], grid_1d((n as u32).div_ceil(256)))
}

/// Elements one workgroup of [`step_all`] updates: 16 per invocation, so the block table stays small
/// (under 1 MiB for 2^28 parameters) while a tensor of a few values costs a workgroup only. It equals
/// the reduction's block, so the same table serves the gradient norm.
pub const BLOCK: usize = 4096;

/// A run of parameters for [`step_all`]: `len` values from element `start` of the buffers that hold every
/// tensor, with or without weight decay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    pub decay: bool,
}

/// The block table of [`step_all`]: which elements each workgroup updates, at most [`BLOCK`] of one
/// tensor each. Built once per model (and set of frozen tensors), reused every step.
pub struct Blocks {
    table: GpuTensor,
    count: u32,
    /// One past the last element any span covers.
    end: usize,
}

impl Blocks {
    /// Splits `spans` (in increasing order, not overlapping) into blocks of at most [`BLOCK`] elements.
    pub fn new(gpu: &Gpu, spans: &[Span]) -> Result<Self> {
        // Four u32 per block (a vec4 in the shader): first element, end, weight decay, padding.
        let mut table: Vec<u32> = Vec::new();
        let mut end = 0;
        for (i, s) in spans.iter().enumerate() {
            ensure!(s.start >= end, "adamw: span {i} starts at {} inside the span before it", s.start);
            end = s.start + s.len;
            ensure!(end <= u32::MAX as usize, "adamw: span {i} ends at element {end}, past u32 indexing");
            for first in (s.start..end).step_by(BLOCK) {
                let last = (first + BLOCK).min(end);
                table.extend([first as u32, last as u32, u32::from(s.decay), 0]);
            }
        }
        let count = (table.len() / 4) as u32;
        // A buffer cannot be empty; with nothing to update no workgroup reads it.
        if table.is_empty() {
            table.extend([0; 4]);
        }
        Ok(Self { table: gpu.upload(&table, "adam blocks")?, count, end })
    }

    /// The blocks listed.
    pub fn count(&self) -> u32 {
        self.count
    }
}

/// [`step`] over every span of `blocks` in one dispatch: `param`, `grad`, `m` and `v` each hold all the
/// tensors, at the same offsets. With a `loss_scale` (element 0 of
/// [`LossScale`](super::loss_scale::LossScale)'s state) the gradients and `norm_sq` are those of the
/// scaled loss: the step divides the scale out, and changes nothing when `norm_sq` is not finite.
#[allow(clippy::too_many_arguments)]
pub fn step_all(
    rec: &mut Recorder,
    blocks: &Blocks,
    param: &GpuTensor,
    grad: &GpuTensor,
    m: &GpuTensor,
    v: &GpuTensor,
    norm_sq: &GpuTensor,
    loss_scale: Option<&GpuTensor>,
    p: &AdamParams,
) -> Result<()> {
    let n = check_lengths(param, grad, m, v)?;
    ensure!(
        blocks.end <= n,
        "adamw: the block table reaches element {}, {} holds {n}",
        blocks.end,
        param.label
    );
    ensure!(norm_sq.len >= 1, "adamw: norm_sq {} is empty", norm_sq.label);
    check_hyperparameters(p)?;
    let params = Params { scaled: loss_scale.is_some().into(), ..uniform(p, blocks.count) };
    // Unscaled, the shader never reads binding 7, but it must hold some buffer.
    let bindings = [param, grad, m, v, norm_sq, &blocks.table, loss_scale.unwrap_or(norm_sq)];
    rec.dispatch(&SHADER, "step_blocks", &params, &bindings, grid_1d(blocks.count))
}

/// The optimiser over roles held in several chunks ([`Role`]): one block table per chunk, listing the
/// tensors it trains, and the partial sums of the gradient norm, one per block in tensor order. Blocks
/// never cross a tensor, so the norm, and hence every step, is the same whatever the chunk size.
pub struct Plan {
    /// Per chunk: its blocks and the index of its first partial.
    chunks: Vec<(Blocks, u32)>,
    partials: GpuTensor,
    blocks: u32,
}

impl Plan {
    /// The plan for the tensors of `role` (any of the roles: they share one layout); `decay(i)` says
    /// whether tensor i is trained with weight decay, `None` that it is not trained.
    pub fn new(gpu: &Gpu, role: &Role, decay: impl Fn(usize) -> Option<bool>) -> Result<Self> {
        let mut spans: Vec<Vec<Span>> = vec![Vec::new(); role.chunks.len()];
        for (i, t) in role.tensors.iter().enumerate() {
            if let Some(decay) = decay(i) {
                spans[role.chunk_of(i)].push(Span { start: (t.offset / 4) as usize, len: t.len, decay });
            }
        }
        let mut chunks = Vec::with_capacity(spans.len());
        let mut blocks = 0u32;
        for spans in &spans {
            let table = Blocks::new(gpu, spans)?;
            let count = table.count;
            chunks.push((table, blocks));
            blocks =
                blocks.checked_add(count).ok_or_else(|| anyhow::anyhow!("adamw: more than 2^32 blocks"))?;
        }
        let partials = gpu.tensor(blocks.max(1) as usize, "gradient norm partials")?;
        Ok(Self { chunks, partials, blocks })
    }

    /// `out[0]` = the squared norm of the trained tensors' gradients.
    pub fn norm_sq(&self, rec: &mut Recorder, grads: &Role, out: &GpuTensor) -> Result<()> {
        self.check_role(grads)?;
        for ((blocks, base), chunk) in self.chunks.iter().zip(&grads.chunks) {
            reduce::sums_of_squares_listed(rec, chunk, &blocks.table, blocks.count, *base, &self.partials)?;
        }
        reduce::finish(rec, &self.partials, self.blocks, out)
    }

    /// [`step_all`] over every chunk.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        rec: &mut Recorder,
        params: &Role,
        grads: &Role,
        m: &Role,
        v: &Role,
        norm_sq: &GpuTensor,
        loss_scale: Option<&GpuTensor>,
        p: &AdamParams,
    ) -> Result<()> {
        for role in [params, grads, m, v] {
            self.check_role(role)?;
        }
        for (c, (blocks, _)) in self.chunks.iter().enumerate() {
            let (pc, gc, mc, vc) = (&params.chunks[c], &grads.chunks[c], &m.chunks[c], &v.chunks[c]);
            step_all(rec, blocks, pc, gc, mc, vc, norm_sq, loss_scale, p)?;
        }
        Ok(())
    }

    fn check_role(&self, role: &Role) -> Result<()> {
        ensure!(
            role.chunks.len() == self.chunks.len(),
            "adamw: a role in {} chunks, the plan has {}",
            role.chunks.len(),
            self.chunks.len()
        );
        Ok(())
    }
}

/// The plain-Rust reference (f64, with the hyperparameters' f32 values widened).
pub mod reference {
    pub fn step(
        param: &mut [f64],
        grad: &[f64],
        m: &mut [f64],
        v: &mut [f64],
        norm_sq: f64,
        p: &super::AdamParams,
    ) {
        let n = param.len();
        assert!(grad.len() == n && m.len() == n && v.len() == n, "lengths differ");
        assert!(p.step >= 1, "step starts at 1");
        let (lr, wd) = (f64::from(p.lr), f64::from(p.weight_decay));
        let (b1, b2, eps) = (f64::from(p.beta1), f64::from(p.beta2), f64::from(p.eps));
        let max_norm = f64::from(p.max_norm);
        let clip = if max_norm > 0.0 { (max_norm / (norm_sq.sqrt() + 1e-6)).min(1.0) } else { 1.0 };
        let t = p.step as f64;
        let (bc1, bc2) = (1.0 - b1.powf(t), 1.0 - b2.powf(t));
        for i in 0..n {
            let mut g = clip * grad[i] * f64::from(p.grad_scale);
            if p.decoupled {
                param[i] -= lr * wd * param[i];
            } else {
                g += wd * param[i];
            }
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let (m_hat, v_hat) = (m[i] / bc1, v[i] / bc2);
            param[i] -= lr * m_hat / (v_hat.sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::step;
    use super::AdamParams;
    use crate::ops::testing::*;

    fn params(decoupled: bool, max_norm: f32) -> AdamParams {
        AdamParams {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled,
            max_norm,
            grad_scale: 1.0,
            step: 1,
        }
    }

    /// At t = 1 the bias corrections undo the moments: m_hat = g and v_hat = g^2, so the step is
    /// lr * g / (|g| + eps).
    #[test]
    fn first_step_moves_each_parameter_by_lr_times_the_sign() {
        let n = 9;
        let (w0, grad) = (randn(n, 1), randn(n, 2));
        let norm_sq: f64 = grad.iter().map(|g| g * g).sum();
        for decoupled in [true, false] {
            for max_norm in [0.0, 1e3, 0.5] {
                let p = params(decoupled, max_norm);
                let (mut w, mut m, mut v) = (w0.clone(), vec![0.0; n], vec![0.0; n]);
                step(&mut w, &grad, &mut m, &mut v, norm_sq, &p);
                let (lr, wd) = (f64::from(p.lr), f64::from(p.weight_decay));
                let clip = if max_norm > 0.0 {
                    (f64::from(max_norm) / (norm_sq.sqrt() + 1e-6)).min(1.0)
                } else {
                    1.0
                };
                let want: Vec<f64> = w0
                    .iter()
                    .zip(&grad)
                    .map(|(&w, &g)| {
                        let (decayed, g) =
                            if decoupled { (w - lr * wd * w, clip * g) } else { (w, clip * g + wd * w) };
                        decayed - lr * g / (g.abs() + f64::from(p.eps))
                    })
                    .collect();
                assert_close(&format!("adam first step d{decoupled} clip {max_norm}"), &w, &want, 1e-12);
            }
        }
    }

    /// Several steps against PyTorch's own arrangement of the same update (clip_grad_norm_, then
    /// torch.optim.AdamW / Adam): step size lr / bc1 and denominator sqrt(v) / sqrt(bc2) + eps.
    #[test]
    fn steps_match_pytorchs_formulation() {
        let n = 23;
        for decoupled in [true, false] {
            for max_norm in [0.0f32, 2.0] {
                let mut p = params(decoupled, max_norm);
                p.grad_scale = 0.5;
                let (mut w, mut m, mut v) = (randn(n, 5), vec![0.0; n], vec![0.0; n]);
                let (mut tw, mut tm, mut tv) = (w.clone(), m.clone(), v.clone());
                for t in 1..=4u64 {
                    p.step = t;
                    let grad = randn(n, 10 + t);
                    let norm_sq: f64 = grad.iter().map(|g| g * g).sum();
                    step(&mut w, &grad, &mut m, &mut v, norm_sq, &p);

                    let (lr, wd, eps) = (f64::from(p.lr), f64::from(p.weight_decay), f64::from(p.eps));
                    let (b1, b2) = (f64::from(p.beta1), f64::from(p.beta2));
                    let total = norm_sq.sqrt();
                    let coef =
                        if max_norm > 0.0 { (f64::from(max_norm) / (total + 1e-6)).min(1.0) } else { 1.0 };
                    let (bc1, bc2) = (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
                    for i in 0..n {
                        let mut g = grad[i] * coef * f64::from(p.grad_scale);
                        if decoupled {
                            tw[i] *= 1.0 - lr * wd;
                        } else {
                            g += wd * tw[i];
                        }
                        tm[i] += (g - tm[i]) * (1.0 - b1);
                        tv[i] = tv[i] * b2 + (1.0 - b2) * g * g;
                        let denom = tv[i].sqrt() / bc2.sqrt() + eps;
                        tw[i] -= lr / bc1 * tm[i] / denom;
                    }
                    let name = format!("adam d{decoupled} clip {max_norm} t{t}");
                    assert_close(&format!("{name} param"), &w, &tw, 1e-10);
                    assert_close(&format!("{name} m"), &m, &tm, 1e-10);
                    assert_close(&format!("{name} v"), &v, &tv, 1e-10);
                }
            }
        }
    }
}
