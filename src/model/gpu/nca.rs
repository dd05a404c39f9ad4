//! The NCA language model's body on the GPU (docs/nca-lm.md). Token positions are cells; step s updates
//! every cell from its causal neighbourhood:
//!   p = conv_s(h_s) (depthwise, causal, width w), q = rmsnorm_s(p),
//!   u = fc2_s(act(fc1_s(q))), h_{s+1} = h_s + m_s * u,
//! with m_s the fire mask (1 / fire_rate where a cell fires while training, 1 everywhere otherwise).
//! The backward pass runs the steps in reverse: dh_s = dh_{s+1} + conv_s^T(rmsnorm_s^T(fc1_s^T(act'
//! (fc2_s^T(m_s dh_{s+1}))))), each factor an op's backward kernel. When recomputing only the states
//! h_0..h_K are kept and each step's perception and MLP input are recomputed from h_s on the way back.

use anyhow::Result;

use super::{Arch, GpuModel};
use crate::gpu::{Arena, GpuTensor, Recorder};
use crate::model::config::ModelConfig;
use crate::model::dropout::fire_mask;
use crate::ops::conv::{self, CausalConvShape};
use crate::ops::matmul::{self, MatmulShape};
use crate::ops::{activation, cell_update, rmsnorm, Accumulate};

/// One step's values that its backward pass reads.
pub(super) struct StepActs {
    /// The perception before and after its norm, and the norm's 1/rms per cell.
    p: GpuTensor,
    rstd: GpuTensor,
    q: GpuTensor,
    /// The MLP's hidden pre-activation and activation.
    a: GpuTensor,
    g: GpuTensor,
}

pub(super) struct NcaActs {
    /// h_0..h_{K-1}; h_K is the model's `x_out`.
    states: Vec<GpuTensor>,
    /// Every step's values, or one set that each step fills again when recomputing.
    steps: Vec<StepActs>,
    /// The update u in the forward pass, du in the backward pass.
    u: GpuTensor,
    dg: GpuTensor,
    dq: GpuTensor,
}

pub(super) struct NcaSlots {
    states: Vec<usize>,
    steps: Vec<[usize; 5]>,
    singles: [usize; 3],
}

impl NcaActs {
    /// Reserves what the backward pass reads in `kept` (with `recompute`, one step's values rather
    /// than every step's) and the update and gradient buffers in `work`.
    pub(super) fn reserve(
        kept: &mut Arena,
        work: &mut Arena,
        cfg: &ModelConfig,
        n: usize,
        recompute: bool,
    ) -> NcaSlots {
        let (d, hid) = (cfg.d_model as usize, cfg.mlp_hidden as usize);
        let states = (0..cfg.steps).map(|s| kept.reserve(&format!("state {s}"), n * d)).collect();
        let sets = if recompute { 1 } else { cfg.steps };
        let steps = (0..sets)
            .map(|s| {
                let mut r = |name: &str, len: usize| kept.reserve(&format!("step {s} {name}"), len);
                [r("p", n * d), r("rstd", n), r("q", n * d), r("a", n * hid), r("g", n * hid)]
            })
            .collect();
        let singles = [work.reserve("u", n * d), work.reserve("dg", n * hid), work.reserve("dq", n * d)];
        NcaSlots { states, steps, singles }
    }

    /// Scratch the NCA's backward kernels need beyond the transformer's (0 for a transformer).
    pub(super) fn scratch_len(cfg: &ModelConfig, batch: u32, seq_len: u32) -> usize {
        match cfg.arch {
            Arch::Nca => conv::causal_scratch_len(&CausalConvShape {
                batch,
                seq_len,
                channels: cfg.d_model,
                width: cfg.kernel_width,
            }),
            Arch::Transformer => 0,
        }
    }

    /// Where the embedding writes: h_0.
    pub(super) fn input(&self) -> &GpuTensor {
        &self.states[0]
    }
}

impl NcaSlots {
    pub(super) fn resolve(&self, kept: &[GpuTensor], work: &[GpuTensor]) -> NcaActs {
        let at = |i: usize| kept[i].clone();
        NcaActs {
            states: self.states.iter().map(|&i| at(i)).collect(),
            steps: self
                .steps
                .iter()
                .map(|s| StepActs { p: at(s[0]), rstd: at(s[1]), q: at(s[2]), a: at(s[3]), g: at(s[4]) })
                .collect(),
            u: work[self.singles[0]].clone(),
            dg: work[self.singles[1]].clone(),
            dq: work[self.singles[2]].clone(),
        }
    }
}

impl GpuModel {
    fn conv_shape(&self) -> CausalConvShape {
        CausalConvShape {
            batch: self.batch,
            seq_len: self.seq_len,
            channels: self.cfg.d_model,
            width: self.cfg.kernel_width,
        }
    }

    /// Step s's values from h_s; the update u too when `update` (the recompute pass needs only the rest).
    fn nca_step_values(&self, rec: &mut Recorder, c: &NcaActs, s: usize, update: bool) -> Result<()> {
        let (cfg, w) = (&self.cfg, &self.index.cells[s]);
        let (n, d, hid) = (self.n(), cfg.d_model, cfg.mlp_hidden);
        let st = &c.steps[s % c.steps.len()];
        let p = |i: usize| &self.params[i];
        conv::causal_forward(rec, &c.states[s], p(w.conv), p(w.conv_bias), &st.p, &self.conv_shape())?;
        rmsnorm::forward(rec, &st.p, p(w.norm), &st.q, &st.rstd, n, d, cfg.norm_eps)?;
        let fc1 = MatmulShape { m: n, n: hid, k: d, trans_a: false, trans_b: true, accumulate: false };
        self.matmul(rec, &st.q, p(w.fc1), &st.a, &fc1, Some(p(w.fc1_bias)))?;
        activation::forward(rec, &st.a, &st.g, cfg.activation)?;
        if update {
            let fc2 = MatmulShape { m: n, n: d, k: hid, trans_a: false, trans_b: true, accumulate: false };
            self.matmul(rec, &st.g, p(w.fc2), &c.u, &fc2, Some(p(w.fc2_bias)))?;
        }
        Ok(())
    }

    /// The K updates, from h_0 to `x_out`.
    pub(super) fn nca_forward(&self, rec: &mut Recorder, c: &NcaActs, step_key: Option<u64>) -> Result<()> {
        let (key, rate) = fire_mask(&self.cfg, step_key);
        let steps = self.index.cells.len();
        for s in 0..steps {
            self.nca_step_values(rec, c, s, true)?;
            let next = c.states.get(s + 1).unwrap_or(&self.acts.x_out);
            cell_update::forward(
                rec,
                &c.states[s],
                &c.u,
                next,
                self.n(),
                self.cfg.d_model,
                key,
                s as u32,
                rate,
            )?;
        }
        Ok(())
    }

    /// The K updates' backward pass, from dL/dh_K in `dx` to dL/dh_0 in `dx`; gradients add to `grads`.
    pub(super) fn nca_backward(&self, rec: &mut Recorder, c: &NcaActs, step_key: Option<u64>) -> Result<()> {
        let cfg = &self.cfg;
        let (n, d, hid) = (self.n(), cfg.d_model, cfg.mlp_hidden);
        let (key, rate) = fire_mask(cfg, step_key);
        let (dh, scratch) = (&self.acts.dx, &self.acts.scratch);
        for s in (0..self.index.cells.len()).rev() {
            let w = &self.index.cells[s];
            if c.steps.len() < c.states.len() {
                self.nca_step_values(rec, c, s, false)?;
            }
            let st = &c.steps[s % c.steps.len()];
            // h_{s+1} = h_s + m u: dh passes through, du = m dh.
            cell_update::backward(rec, dh, dh, &c.u, n, d, key, s as u32, rate)?;
            // u = g fc2^T + b2.
            matmul::column_sums(rec, &c.u, &self.grads[w.fc2_bias], n, d, true, scratch)?;
            self.linear_backward(rec, &c.u, &st.g, w.fc2, &c.dg, hid, d, false)?;
            // g = act(a), a = q fc1^T + b1.
            activation::backward(rec, &st.a, &c.dg, &c.dg, cfg.activation)?;
            matmul::column_sums(rec, &c.dg, &self.grads[w.fc1_bias], n, hid, true, scratch)?;
            self.linear_backward(rec, &c.dg, &st.q, w.fc1, &c.dq, d, hid, false)?;
            // q = rmsnorm(p), in place: dq becomes dp.
            self.norm_backward(rec, w.norm, &c.dq, &st.p, &st.rstd, &c.dq, false)?;
            // p = conv(h_s): dh_s gains the convolution's input gradient, added in place.
            let (conv_w, dconv_w, dconv_b) =
                (&self.params[w.conv], &self.grads[w.conv], &self.grads[w.conv_bias]);
            let shape = self.conv_shape();
            conv::causal_backward(
                rec,
                &c.dq,
                &c.states[s],
                conv_w,
                dh,
                dconv_w,
                dconv_b,
                scratch,
                &shape,
                Accumulate { dx: true, dw: true },
            )?;
        }
        Ok(())
    }
}
