//! The whole model in plain Rust and f64, built from the ops' references: the ground truth the GPU
//! model's logits, loss and every parameter gradient are tested against.

use super::config::ModelConfig;
use super::dropout::{fire_mask, layer_dropout};
use super::params::{CellIndex, ParamIndex};
use crate::ops::attention::{self, AttentionShape};
use crate::ops::conv::{self, CausalConvShape};
use crate::ops::rope::Direction;
use crate::ops::{activation, cell_update, cross_entropy, embedding, matmul, rmsnorm, rope, swiglu};

/// One micro-batch: input ids and targets (`cross_entropy::IGNORE` where not trained on), row-major
/// [batch, seq_len].
#[derive(Clone, Debug)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub targets: Vec<u32>,
    pub batch: usize,
    pub seq_len: usize,
}

impl Batch {
    pub fn counted(&self) -> usize {
        self.targets.iter().filter(|&&t| t != cross_entropy::IGNORE).count()
    }
}

/// What one forward and backward pass gives.
pub struct ForwardBackward {
    /// Unscaled loss of every position (0 where ignored).
    pub losses: Vec<f64>,
    pub logits: Vec<f64>,
    /// Gradient of `scale * sum(losses)` for every parameter tensor.
    pub grads: Vec<Vec<f64>>,
}

fn linear(x: &[f64], w: &[f64], rows: usize, inp: usize, out: usize) -> Vec<f64> {
    let shape = matmul::MatmulShape {
        m: rows as u32,
        n: out as u32,
        k: inp as u32,
        trans_a: false,
        trans_b: true,
        accumulate: false,
    };
    matmul::reference::matmul(x, w, &shape)
}

/// dX = dY W and dW = dY^T X for Y = X W^T.
fn linear_backward(
    dy: &[f64],
    x: &[f64],
    w: &[f64],
    rows: usize,
    inp: usize,
    out: usize,
) -> (Vec<f64>, Vec<f64>) {
    let dx_shape = matmul::MatmulShape {
        m: rows as u32,
        n: inp as u32,
        k: out as u32,
        trans_a: false,
        trans_b: false,
        accumulate: false,
    };
    let dw_shape = matmul::MatmulShape {
        m: out as u32,
        n: inp as u32,
        k: rows as u32,
        trans_a: true,
        trans_b: false,
        accumulate: false,
    };
    (matmul::reference::matmul(dy, w, &dx_shape), matmul::reference::matmul(dy, x, &dw_shape))
}

fn add_into(acc: &mut [f64], x: &[f64]) {
    acc.iter_mut().zip(x).for_each(|(a, b)| *a += b);
}

fn add_bias(x: &mut [f64], bias: &[f64]) {
    x.chunks_mut(bias.len()).for_each(|row| add_into(row, bias));
}

/// What one NCA step keeps for its backward pass.
struct CellSaved {
    h: Vec<f64>,
    p: Vec<f64>,
    rstd: Vec<f64>,
    q: Vec<f64>,
    a: Vec<f64>,
    g: Vec<f64>,
}

/// The NCA's K updates (docs/nca-lm.md), from the embedded tokens to the final state.
fn nca_forward(
    cfg: &ModelConfig,
    params: &[Vec<f64>],
    cells: &[CellIndex],
    mut h: Vec<f64>,
    shape: &CausalConvShape,
    step_key: Option<u64>,
) -> (Vec<f64>, Vec<CellSaved>) {
    let n = (shape.batch * shape.seq_len) as usize;
    let (d, hid) = (cfg.d_model as usize, cfg.mlp_hidden as usize);
    let (key, rate) = fire_mask(cfg, step_key);
    let mut saved = Vec::new();
    for (s, w) in cells.iter().enumerate() {
        let p = conv::reference::causal_forward(&h, &params[w.conv], &params[w.conv_bias], shape);
        let (q, rstd) = rmsnorm::reference::forward(&p, &params[w.norm], n, d, f64::from(cfg.norm_eps));
        let mut a = linear(&q, &params[w.fc1], n, d, hid);
        add_bias(&mut a, &params[w.fc1_bias]);
        let g = activation::reference::forward(&a, cfg.activation);
        let mut u = linear(&g, &params[w.fc2], n, hid, d);
        add_bias(&mut u, &params[w.fc2_bias]);
        let next = cell_update::reference::forward(&h, &u, n, d, key, s as u32, rate);
        saved.push(CellSaved { h, p, rstd, q, a, g });
        h = next;
    }
    (h, saved)
}

/// The NCA's backward pass: dL/dh_0 from dL/dh_K, adding every step's weight gradients to `grads`.
#[allow(clippy::too_many_arguments)]
fn nca_backward(
    cfg: &ModelConfig,
    params: &[Vec<f64>],
    cells: &[CellIndex],
    saved: &[CellSaved],
    mut dh: Vec<f64>,
    shape: &CausalConvShape,
    step_key: Option<u64>,
    grads: &mut [Vec<f64>],
) -> Vec<f64> {
    let n = (shape.batch * shape.seq_len) as usize;
    let (d, hid) = (cfg.d_model as usize, cfg.mlp_hidden as usize);
    let (key, rate) = fire_mask(cfg, step_key);
    for (s, (w, c)) in cells.iter().zip(saved).enumerate().rev() {
        let (dh_skip, du) = cell_update::reference::backward(&dh, n, d, key, s as u32, rate);
        add_into(&mut grads[w.fc2_bias], &matmul::reference::column_sums(&du, n, d));
        let (dg, dfc2) = linear_backward(&du, &c.g, &params[w.fc2], n, hid, d);
        add_into(&mut grads[w.fc2], &dfc2);
        let da = activation::reference::backward(&c.a, &dg, cfg.activation);
        add_into(&mut grads[w.fc1_bias], &matmul::reference::column_sums(&da, n, hid));
        let (dq, dfc1) = linear_backward(&da, &c.q, &params[w.fc1], n, d, hid);
        add_into(&mut grads[w.fc1], &dfc1);
        let (dp, dnorm) = rmsnorm::reference::backward(&dq, &c.p, &params[w.norm], &c.rstd, n, d);
        add_into(&mut grads[w.norm], &dnorm);
        let (dh_conv, dkernel, dbias) = conv::reference::causal_backward(&dp, &c.h, &params[w.conv], shape);
        add_into(&mut grads[w.conv], &dkernel);
        add_into(&mut grads[w.conv_bias], &dbias);
        dh = dh_skip;
        add_into(&mut dh, &dh_conv);
    }
    dh
}

/// Forward and backward of the whole model. `scale` multiplies the loss (1 / counted targets for a mean);
/// `step_key` turns attention dropout on (None: evaluation, no dropout).
pub fn forward_backward(
    cfg: &ModelConfig,
    params: &[Vec<f64>],
    index: &ParamIndex,
    batch: &Batch,
    scale: f64,
    step_key: Option<u64>,
) -> ForwardBackward {
    let (n, t) = (batch.batch * batch.seq_len, batch.seq_len);
    let (d, hid, v) = (cfg.d_model as usize, cfg.mlp_hidden as usize, cfg.vocab_size as usize);
    let (heads, hd) = (cfg.heads as usize, cfg.head_dim() as usize);
    let eps = f64::from(cfg.norm_eps);
    let theta = f64::from(cfg.rope_theta);
    let turn = |x: &[f64], direction| rope::reference::turn(x, direction, n, t, heads, hd, theta);
    let shape = AttentionShape {
        batch: batch.batch as u32,
        seq_len: t as u32,
        heads: heads as u32,
        head_dim: hd as u32,
    };

    struct Saved {
        x: Vec<f64>,
        rstd1: Vec<f64>,
        h: Vec<f64>,
        q: Vec<f64>,
        k: Vec<f64>,
        v: Vec<f64>,
        o: Vec<f64>,
        lse: Vec<f64>,
        xmid: Vec<f64>,
        rstd2: Vec<f64>,
        h2: Vec<f64>,
        a: Vec<f64>,
        b: Vec<f64>,
        m: Vec<f64>,
    }
    let mut x = embedding::reference::forward(&params[index.embed], &batch.ids, d);
    let conv_shape = CausalConvShape {
        batch: batch.batch as u32,
        seq_len: t as u32,
        channels: d as u32,
        width: cfg.kernel_width,
    };
    let mut cell_saved = Vec::new();
    if !index.cells.is_empty() {
        (x, cell_saved) = nca_forward(cfg, params, &index.cells, x, &conv_shape, step_key);
    }
    let mut saved = Vec::new();
    for (l, li) in index.layers.iter().enumerate() {
        let (h, rstd1) = rmsnorm::reference::forward(&x, &params[li.attn_norm], n, d, eps);
        let q = turn(&linear(&h, &params[li.q], n, d, d), Direction::Forward);
        let k = turn(&linear(&h, &params[li.k], n, d, d), Direction::Forward);
        let vv = linear(&h, &params[li.v], n, d, d);
        let (o, lse) = attention::reference::forward(&q, &k, &vv, &shape, layer_dropout(cfg, step_key, l));
        let mut xmid = x.clone();
        add_into(&mut xmid, &linear(&o, &params[li.o], n, d, d));
        let (h2, rstd2) = rmsnorm::reference::forward(&xmid, &params[li.mlp_norm], n, d, eps);
        let a = linear(&h2, &params[li.gate], n, d, hid);
        let b = linear(&h2, &params[li.up], n, d, hid);
        let m = swiglu::reference::forward(&a, &b);
        let mut next = xmid.clone();
        add_into(&mut next, &linear(&m, &params[li.down], n, hid, d));
        saved.push(Saved { x, rstd1, h, q, k, v: vv, o, lse, xmid, rstd2, h2, a, b, m });
        x = next;
    }
    let (fin, rstd_f) = rmsnorm::reference::forward(&x, &params[index.final_norm], n, d, eps);
    let mut logits = linear(&fin, &params[index.head], n, d, v);
    if let Some(bi) = index.head_bias {
        for row in logits.chunks_mut(v) {
            add_into(row, &params[bi]);
        }
    }
    let (losses, dlogits) = cross_entropy::reference::forward_backward(&logits, &batch.targets, n, v, scale);

    let mut grads: Vec<Vec<f64>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
    if let Some(bi) = index.head_bias {
        grads[bi] = matmul::reference::column_sums(&dlogits, n, v);
    }
    let (dfin, dhead) = linear_backward(&dlogits, &fin, &params[index.head], n, d, v);
    add_into(&mut grads[index.head], &dhead);
    let (mut dx, dwf) = rmsnorm::reference::backward(&dfin, &x, &params[index.final_norm], &rstd_f, n, d);
    grads[index.final_norm] = dwf;
    for (l, li) in index.layers.iter().enumerate().rev() {
        let s = &saved[l];
        // MLP: x_next = xmid + m W_down^T.
        let (dm, dwd) = linear_backward(&dx, &s.m, &params[li.down], n, hid, d);
        grads[li.down] = dwd;
        let (da, db) = swiglu::reference::backward(&s.a, &s.b, &dm);
        let (mut dh2, dwg) = linear_backward(&da, &s.h2, &params[li.gate], n, d, hid);
        let (dh2_up, dwu) = linear_backward(&db, &s.h2, &params[li.up], n, d, hid);
        add_into(&mut dh2, &dh2_up);
        grads[li.gate] = dwg;
        grads[li.up] = dwu;
        let (dxmid_norm, dw2) =
            rmsnorm::reference::backward(&dh2, &s.xmid, &params[li.mlp_norm], &s.rstd2, n, d);
        grads[li.mlp_norm] = dw2;
        let mut dxmid = dx;
        add_into(&mut dxmid, &dxmid_norm);
        // Attention: xmid = x + o W_o^T.
        let (d_o, dwo) = linear_backward(&dxmid, &s.o, &params[li.o], n, d, d);
        grads[li.o] = dwo;
        let (dq, dk, dv) = attention::reference::backward(
            &s.q,
            &s.k,
            &s.v,
            &s.o,
            &s.lse,
            &d_o,
            &shape,
            layer_dropout(cfg, step_key, l),
        );
        let dq = turn(&dq, Direction::Backward);
        let dk = turn(&dk, Direction::Backward);
        let (mut dh, dwq) = linear_backward(&dq, &s.h, &params[li.q], n, d, d);
        let (dh_k, dwk) = linear_backward(&dk, &s.h, &params[li.k], n, d, d);
        let (dh_v, dwv) = linear_backward(&dv, &s.h, &params[li.v], n, d, d);
        add_into(&mut dh, &dh_k);
        add_into(&mut dh, &dh_v);
        grads[li.q] = dwq;
        grads[li.k] = dwk;
        grads[li.v] = dwv;
        let (dx_norm, dw1) = rmsnorm::reference::backward(&dh, &s.x, &params[li.attn_norm], &s.rstd1, n, d);
        grads[li.attn_norm] = dw1;
        dx = dxmid;
        add_into(&mut dx, &dx_norm);
    }
    if !index.cells.is_empty() {
        dx = nca_backward(cfg, params, &index.cells, &cell_saved, dx, &conv_shape, step_key, &mut grads);
    }
    let demb = embedding::reference::backward(&dx, &batch.ids, v, d);
    add_into(&mut grads[index.embed], &demb);
    ForwardBackward { losses, logits, grads }
}
