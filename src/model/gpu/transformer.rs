//! The transformer's body on the GPU: Llama blocks, each x_mid = x + attention(rope(norm(x))) W_o^T and
//! x_next = x_mid + swiglu(norm(x_mid)) W_down^T, forward and backward as op kernels. The queries, keys
//! and values come from one product with their weights stacked, `[tokens, 3d]`, as do the gate and up
//! halves of the MLP, `[tokens, 2 * hidden]`: fewer, wider products, and their gradients likewise.

use anyhow::Result;

use super::GpuModel;
use crate::gpu::{Arena, GpuTensor, Recorder};
use crate::model::config::ModelConfig;
use crate::model::dropout::layer_dropout;
use crate::ops::attention::{self, AttentionShape};
use crate::ops::{rmsnorm, rope, swiglu};

/// What one layer's backward pass reads besides its input: kept for every layer, or, when recomputing,
/// one set that each layer's forward fills again on the way back.
struct LayerActs {
    rstd1: GpuTensor,
    h: GpuTensor,
    qkv: GpuTensor,
    o: GpuTensor,
    lse: GpuTensor,
    xmid: GpuTensor,
    rstd2: GpuTensor,
    h2: GpuTensor,
    gate_up: GpuTensor,
    m: GpuTensor,
}

/// The transformer's buffers of one micro-batch shape.
pub(super) struct TransformerActs {
    /// Each layer's input x (the residual stream entering it).
    inputs: Vec<GpuTensor>,
    /// One set per layer, or a single set when recomputing.
    layers: Vec<LayerActs>,
    dh: GpuTensor,
    dqkv: GpuTensor,
    d_o: GpuTensor,
    dm: GpuTensor,
    d_gate_up: GpuTensor,
    delta: GpuTensor,
}

pub(super) struct TransformerSlots {
    inputs: Vec<usize>,
    layers: Vec<[usize; 10]>,
    singles: [usize; 6],
}

impl TransformerActs {
    /// Reserves what the backward pass reads in `kept` (with `recompute`, each layer's input only) and
    /// the gradient buffers in `work`.
    pub(super) fn reserve(
        kept: &mut Arena,
        work: &mut Arena,
        cfg: &ModelConfig,
        batch: u32,
        seq_len: u32,
        recompute: bool,
    ) -> TransformerSlots {
        let n = (batch * seq_len) as usize;
        let (d, hid) = (cfg.d_model as usize, cfg.mlp_hidden as usize);
        let lse_len = (batch * cfg.heads * seq_len) as usize;
        let inputs = (0..cfg.layers).map(|l| kept.reserve(&format!("layer {l} x"), n * d)).collect();
        let sets = if recompute { 1 } else { cfg.layers };
        let layers = (0..sets)
            .map(|l| {
                let mut r = |name: &str, len: usize| kept.reserve(&format!("layer {l} {name}"), len);
                [
                    r("rstd1", n),
                    r("h", n * d),
                    r("qkv", n * 3 * d),
                    r("o", n * d),
                    r("lse", lse_len),
                    r("xmid", n * d),
                    r("rstd2", n),
                    r("h2", n * d),
                    r("gate_up", n * 2 * hid),
                    r("m", n * hid),
                ]
            })
            .collect();
        let mut r = |name: &str, len: usize| work.reserve(name, len);
        let singles = [
            r("dh", n * d),
            r("dqkv", n * 3 * d),
            r("d_o", n * d),
            r("dm", n * hid),
            r("d_gate_up", n * 2 * hid),
            r("delta", lse_len),
        ];
        TransformerSlots { inputs, layers, singles }
    }

    /// Where the embedding writes: the first block's input.
    pub(super) fn input(&self) -> &GpuTensor {
        &self.inputs[0]
    }

    /// Layer l's buffers (the shared set when recomputing).
    fn layer(&self, l: usize) -> &LayerActs {
        &self.layers[l.min(self.layers.len() - 1)]
    }

    fn recomputes(&self) -> bool {
        self.layers.len() < self.inputs.len()
    }
}

impl TransformerSlots {
    pub(super) fn resolve(&self, kept: &[GpuTensor], work: &[GpuTensor]) -> TransformerActs {
        let at = |i: usize| kept[i].clone();
        let layers = self
            .layers
            .iter()
            .map(|s| LayerActs {
                rstd1: at(s[0]),
                h: at(s[1]),
                qkv: at(s[2]),
                o: at(s[3]),
                lse: at(s[4]),
                xmid: at(s[5]),
                rstd2: at(s[6]),
                h2: at(s[7]),
                gate_up: at(s[8]),
                m: at(s[9]),
            })
            .collect();
        let s = |i: usize| work[self.singles[i]].clone();
        TransformerActs {
            inputs: self.inputs.iter().map(|&i| at(i)).collect(),
            layers,
            dh: s(0),
            dqkv: s(1),
            d_o: s(2),
            dm: s(3),
            d_gate_up: s(4),
            delta: s(5),
        }
    }
}

impl GpuModel {
    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            batch: self.batch,
            seq_len: self.seq_len,
            heads: self.cfg.heads,
            head_dim: self.cfg.head_dim(),
        }
    }

    /// Turns the queries and keys (or their gradients) of every token in place, both in one dispatch.
    fn rope_qk(&self, rec: &mut Recorder, direction: rope::Direction, qkv: &GpuTensor) -> Result<()> {
        let cfg = &self.cfg;
        let shape = rope::RopeShape {
            rows: self.n(),
            seq_len: self.seq_len,
            heads: cfg.heads,
            head_dim: cfg.head_dim(),
            theta: cfg.rope_theta,
        };
        rope::turn_qk(rec, direction, qkv, &shape)
    }

    /// The transformer blocks, from the first layer's input to `x_out`.
    pub(super) fn transformer_forward(
        &self,
        rec: &mut Recorder,
        t: &TransformerActs,
        step_key: Option<u64>,
    ) -> Result<()> {
        for (l, x) in t.inputs.iter().enumerate() {
            let next = t.inputs.get(l + 1).unwrap_or(&self.acts.x_out);
            self.layer_forward(rec, l, x, t.layer(l), Some(next), step_key)?;
        }
        Ok(())
    }

    /// Layer l from its input x, filling `la`; with `next`, also its output there. The backward pass
    /// recomputes a layer without `next`: it needs everything but the output.
    fn layer_forward(
        &self,
        rec: &mut Recorder,
        l: usize,
        x: &GpuTensor,
        la: &LayerActs,
        next: Option<&GpuTensor>,
        step_key: Option<u64>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (n, d, hid) = (self.n(), cfg.d_model, cfg.mlp_hidden);
        let li = &self.index.layers[l];
        // Each norm also carries the residual stream into the buffer its branch's projection adds to.
        let w1 = &self.params[li.attn_norm];
        rmsnorm::forward_carrying(rec, x, w1, &la.h, &la.rstd1, &la.xmid, n, d, cfg.norm_eps)?;
        self.linear(rec, &la.h, li.qkv(), &la.qkv, d, 3 * d, false)?;
        self.rope_qk(rec, rope::Direction::Forward, &la.qkv)?;
        let dropout = layer_dropout(cfg, step_key, l);
        let shape = self.attention_shape();
        attention::forward_in(rec, &la.qkv, &la.o, &la.lse, &shape, dropout, self.precision)?;
        self.linear(rec, &la.o, li.o, &la.xmid, d, d, true)?;
        let w2 = &self.params[li.mlp_norm];
        match next {
            Some(next) => {
                rmsnorm::forward_carrying(rec, &la.xmid, w2, &la.h2, &la.rstd2, next, n, d, cfg.norm_eps)?
            }
            None => rmsnorm::forward(rec, &la.xmid, w2, &la.h2, &la.rstd2, n, d, cfg.norm_eps)?,
        }
        self.linear(rec, &la.h2, li.gate_up(), &la.gate_up, d, 2 * hid, false)?;
        swiglu::forward(rec, &la.gate_up, &la.m, hid)?;
        match next {
            Some(next) => self.linear(rec, &la.m, li.down, next, hid, d, true),
            None => Ok(()),
        }
    }

    /// The transformer blocks' backward pass, from dL/dx_out in `dx` to dL/dx of the embedding in `dx`.
    /// When recomputing, each layer's forward runs again from its input first, with the same dropout.
    pub(super) fn transformer_backward(
        &self,
        rec: &mut Recorder,
        t: &TransformerActs,
        step_key: Option<u64>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (d, hid) = (cfg.d_model, cfg.mlp_hidden);
        let shape = self.attention_shape();
        let a = &self.acts;
        for (l, (li, x)) in self.index.layers.iter().zip(&t.inputs).enumerate().rev() {
            let la = t.layer(l);
            if t.recomputes() {
                self.layer_forward(rec, l, x, la, None, step_key)?;
            }
            // MLP branch: x_next = xmid + swiglu(h2 [Wg; Wu]^T) Wd^T.
            self.linear_backward(rec, &a.dx, &la.m, li.down, &t.dm, hid, d, false)?;
            swiglu::backward(rec, &la.gate_up, &t.dm, &t.d_gate_up, hid)?;
            self.linear_backward(rec, &t.d_gate_up, &la.h2, li.gate_up(), &t.dh, d, 2 * hid, false)?;
            // The norm's input gradient adds straight into the residual stream's.
            self.norm_backward(rec, li.mlp_norm, &t.dh, &la.xmid, &la.rstd2, &a.dx, true)?;
            // Attention branch: xmid = x + attention(rope(h [Wq; Wk; Wv]^T)) Wo^T.
            self.linear_backward(rec, &a.dx, &la.o, li.o, &t.d_o, d, d, false)?;
            let dropout = layer_dropout(cfg, step_key, l);
            let grads = attention::BackwardTensors {
                qkv: &la.qkv,
                o: &la.o,
                lse: &la.lse,
                d_o: &t.d_o,
                dqkv: &t.dqkv,
                delta: &t.delta,
            };
            attention::backward_in(rec, &grads, &shape, dropout, self.precision)?;
            self.rope_qk(rec, rope::Direction::Backward, &t.dqkv)?;
            self.linear_backward(rec, &t.dqkv, &la.h, li.qkv(), &t.dh, d, 3 * d, false)?;
            self.norm_backward(rec, li.attn_norm, &t.dh, x, &la.rstd1, &a.dx, true)?;
        }
        Ok(())
    }
}
