//! The model on the GPU: parameters, gradients and Adam moments each in one buffer, activations of one
//! micro-batch in another, and forward, backward and the optimiser step recorded as op kernels. This file
//! holds what both architectures share (embedding, final norm, head, loss, optimiser); the bodies between
//! embedding and final norm live in `gpu/transformer.rs` and `gpu/nca.rs`.

use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};

use super::config::{Arch, ModelConfig, Recompute};
use super::params::{HostParams, Moments, ParamIndex, ParamInfo};
use crate::gpu::{role_arena_with_runs, Arena, Gpu, GpuTensor, KernelCache, Recorder, Role};
use crate::ops::loss_scale::{self, LossScale};
use crate::ops::matmul::{self, MatmulShape, Precision};
use crate::ops::{adamw, cross_entropy, embedding, reduce, rmsnorm, tokens, Accumulate};

mod nca;
mod transformer;

use nca::{NcaActs, NcaSlots};
use transformer::{TransformerActs, TransformerSlots};

/// What lies between the embedding and the final norm.
enum Body {
    Transformer(Box<TransformerActs>),
    Nca(Box<NcaActs>),
}

/// Buffers of one micro-batch shape: the body's, and those of the head, the loss and the optimiser.
struct Activations {
    body: Body,
    x_out: GpuTensor,
    rstd_f: GpuTensor,
    fin: GpuTensor,
    logits: GpuTensor,
    losses: GpuTensor,
    dx: GpuTensor,
    dfin: GpuTensor,
    scratch: GpuTensor,
    loss_sum: GpuTensor,
    norm_sq: GpuTensor,
}

pub struct GpuModel {
    pub gpu: Gpu,
    pub cfg: ModelConfig,
    pub infos: Vec<ParamInfo>,
    pub index: ParamIndex,
    /// Parameters, gradients and the two Adam moments: each a role of the same layout, in as few
    /// buffers (chunks) as the device can bind, which the optimiser updates a chunk per dispatch.
    pub params: Role,
    pub grads: Role,
    pub moment1: Role,
    pub moment2: Role,
    optimizer_plan: Mutex<Option<OptimizerPlan>>,
    /// Input ids and targets of the current micro-batch (u32, [batch, seq_len]).
    pub ids: GpuTensor,
    pub targets: GpuTensor,
    pub batch: u32,
    pub seq_len: u32,
    acts: Activations,
    pub cache: KernelCache,
    /// The arithmetic of the matmuls; f32 unless [`set_precision`](Self::set_precision) says otherwise.
    precision: Precision,
    /// The dynamic loss scale of half-precision training.
    loss_scale: Option<LossScale>,
}

/// The optimiser's block tables, for the weight-decay rule and frozen tensors they were built for.
struct OptimizerPlan {
    decay_2d_only: bool,
    frozen: Vec<usize>,
    plan: Arc<adamw::Plan>,
}

/// The weight of a linear layer: one tensor of the parameter list, or a run of them stacked as one
/// matrix (packed so, [`ParamIndex::runs`]).
trait Weight {
    fn tensors(self) -> std::ops::Range<usize>;
}

impl Weight for usize {
    fn tensors(self) -> std::ops::Range<usize> {
        self..self + 1
    }
}

impl Weight for std::ops::Range<usize> {
    fn tensors(self) -> std::ops::Range<usize> {
        self
    }
}

/// Arena slots of one micro-batch's buffers: what the backward pass reads (`kept`: activations) and
/// what every pass overwrites (`work`: gradients of activations, logits, scratch). The memory plan
/// reserves the same slots without a device.
pub(crate) struct MicroBatchSlots {
    body: BodySlots,
    /// x_out, rstd_f, fin.
    kept: [usize; 3],
    /// logits, losses, dx, dfin, scratch, loss_sum, norm_sq.
    work: [usize; 7],
}

impl MicroBatchSlots {
    pub(crate) fn reserve(
        kept: &mut Arena,
        work: &mut Arena,
        cfg: &ModelConfig,
        batch: u32,
        seq_len: u32,
        recompute: bool,
    ) -> Self {
        let n = (batch * seq_len) as usize;
        let (d, hid, v) = (cfg.d_model as usize, cfg.mlp_hidden as usize, cfg.vocab_size as usize);
        let body = match cfg.arch {
            Arch::Transformer => {
                BodySlots::Transformer(TransformerActs::reserve(kept, work, cfg, batch, seq_len, recompute))
            }
            Arch::Nca => BodySlots::Nca(NcaActs::reserve(kept, work, cfg, n, recompute)),
        };
        let scratch_len = [
            rmsnorm::scratch_len(n as u32, d as u32),
            matmul::column_sums_scratch_len(n as u32, v.max(hid) as u32),
            reduce::scratch_len(n),
            NcaActs::scratch_len(cfg, batch, seq_len),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let kept = [kept.reserve("x_out", n * d), kept.reserve("rstd_f", n), kept.reserve("fin", n * d)];
        let work = [
            work.reserve("logits", n * v),
            work.reserve("losses", n),
            work.reserve("dx", n * d),
            work.reserve("dfin", n * d),
            work.reserve("scratch", scratch_len),
            work.reserve("loss_sum", 1),
            work.reserve("norm_sq", 1),
        ];
        Self { body, kept, work }
    }
}

/// Whether the backward pass recomputes layers (NCA steps): as `recompute` says, or as an NCA model's
/// own `model.recompute` does.
pub(crate) fn recomputes(cfg: &ModelConfig, recompute: Recompute) -> bool {
    recompute == Recompute::Layer || (cfg.arch == Arch::Nca && cfg.recompute)
}

/// Arena slots of a body's buffers, resolved to views once the arena is allocated.
enum BodySlots {
    Transformer(TransformerSlots),
    Nca(NcaSlots),
}

impl GpuModel {
    /// Uploads parameters and allocates gradients, moments and activations for micro-batches of
    /// `batch` sequences of `seq_len` tokens, keeping every layer's activations for the backward pass
    /// (an NCA model recomputes where `model.recompute` says so).
    pub fn new(gpu: &Gpu, cfg: &ModelConfig, host: &HostParams, batch: u32, seq_len: u32) -> Result<Self> {
        Self::with_recompute(gpu, cfg, host, batch, seq_len, Recompute::None)
    }

    /// [`new`](Self::new), keeping only what `recompute` says and recomputing the rest in the backward
    /// pass: the same gradients for less memory and about a third more arithmetic.
    pub fn with_recompute(
        gpu: &Gpu,
        cfg: &ModelConfig,
        host: &HostParams,
        batch: u32,
        seq_len: u32,
        recompute: Recompute,
    ) -> Result<Self> {
        cfg.validate()?;
        ensure!(
            seq_len >= 1 && seq_len <= cfg.context,
            "sequence length {seq_len} must be in 1..={} (model.context)",
            cfg.context
        );
        ensure!(batch >= 1, "batch must be at least 1");
        let tensors = || host.infos.iter().map(|i| (i.name.as_str(), i.len()));
        // Parameters and gradients pack the runs the fused products bind as one matrix; the moments
        // keep the same layout, so that the optimiser's table serves all four.
        let runs = host.index.runs();
        let params = role_arena_with_runs(gpu, "params", tensors(), &runs)?;
        let grads = role_arena_with_runs(gpu, "grads", tensors(), &runs)?;
        let moment1 = role_arena_with_runs(gpu, "adam m", tensors(), &runs)?;
        let moment2 = role_arena_with_runs(gpu, "adam v", tensors(), &runs)?;
        for (t, v) in params.iter().zip(&host.values) {
            gpu.write(t, v);
        }
        let acts = Self::activations(gpu, cfg, batch, seq_len, recomputes(cfg, recompute)).with_context(|| {
            format!(
                "the activations of a micro-batch of {batch} x {seq_len} tokens do not fit this device: lower the \
                 micro-batch (train.batch, raising train.grad_accum keeps the step size) or model.context"
            )
        })?;
        let mut ids_arena = Arena::new(gpu, "batch");
        let n = (batch * seq_len) as usize;
        ids_arena.reserve("ids", n);
        ids_arena.reserve("targets", n);
        let mut io = ids_arena.finish(gpu)?.views;
        let targets = io.pop().expect("two views");
        let ids = io.pop().expect("two views");
        Ok(Self {
            gpu: gpu.clone(),
            cfg: cfg.clone(),
            infos: host.infos.clone(),
            index: host.index.clone(),
            params,
            grads,
            moment1,
            moment2,
            optimizer_plan: Mutex::new(None),
            ids,
            targets,
            batch,
            seq_len,
            acts,
            cache: KernelCache::default(),
            precision: Precision::F32,
            loss_scale: None,
        })
    }

    /// Sets the arithmetic of the matmuls and attention. `F16` (mixed precision: f32 weights, optimiser
    /// and everything but the large products, and attention's products where the adapter has
    /// cooperative matrices) also scales the loss dynamically, from `initial_scale`, so that small
    /// gradients survive f16; it needs the adapter's SHADER_F16 feature.
    pub fn set_precision(&mut self, precision: Precision, initial_scale: f32) -> Result<()> {
        self.loss_scale = match precision {
            Precision::F32 => None,
            Precision::F16 => {
                ensure!(
                    self.gpu.features().contains(wgpu::Features::SHADER_F16),
                    "precision f16 needs f16 arithmetic, which {} does not offer (the SHADER_F16 feature): train with precision = \"f32\"",
                    self.gpu.describe()
                );
                Some(LossScale::new(&self.gpu, initial_scale, loss_scale::GROWTH_INTERVAL)?)
            }
        };
        self.precision = precision;
        Ok(())
    }

    /// The matmuls' arithmetic.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The dynamic loss scale, in half precision.
    pub fn loss_scale(&self) -> Option<&LossScale> {
        self.loss_scale.as_ref()
    }

    /// A product in the model's precision.
    fn matmul(
        &self,
        rec: &mut Recorder,
        a: &GpuTensor,
        b: &GpuTensor,
        c: &GpuTensor,
        shape: &MatmulShape,
        bias: Option<&GpuTensor>,
    ) -> Result<()> {
        matmul::matmul_in(rec, a, b, c, shape, bias, self.precision)
    }

    fn activations(
        gpu: &Gpu,
        cfg: &ModelConfig,
        batch: u32,
        seq_len: u32,
        recompute: bool,
    ) -> Result<Activations> {
        let mut kept = Arena::new(gpu, "activations");
        let mut work = Arena::new(gpu, "workspace");
        let slots = MicroBatchSlots::reserve(&mut kept, &mut work, cfg, batch, seq_len, recompute);
        let (kept, work) = (kept.finish(gpu)?.views, work.finish(gpu)?.views);
        let (k, w) = (|i: usize| kept[slots.kept[i]].clone(), |i: usize| work[slots.work[i]].clone());
        let body = match slots.body {
            BodySlots::Transformer(s) => Body::Transformer(Box::new(s.resolve(&kept, &work))),
            BodySlots::Nca(s) => Body::Nca(Box::new(s.resolve(&kept, &work))),
        };
        Ok(Activations {
            body,
            x_out: k(0),
            rstd_f: k(1),
            fin: k(2),
            logits: w(0),
            losses: w(1),
            dx: w(2),
            dfin: w(3),
            scratch: w(4),
            loss_sum: w(5),
            norm_sq: w(6),
        })
    }

    fn n(&self) -> u32 {
        self.batch * self.seq_len
    }

    /// Y = X W^T.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        rec: &mut Recorder,
        x: &GpuTensor,
        w: impl Weight,
        y: &GpuTensor,
        inp: u32,
        out: u32,
        accumulate: bool,
    ) -> Result<()> {
        let shape = MatmulShape { m: self.n(), n: out, k: inp, trans_a: false, trans_b: true, accumulate };
        self.matmul(rec, x, &self.params.run(w.tensors()), y, &shape, None)
    }

    /// dX (=, or += with `accumulate`) dY W and dW += dY^T X for Y = X W^T.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        rec: &mut Recorder,
        dy: &GpuTensor,
        x: &GpuTensor,
        w: impl Weight,
        dx: &GpuTensor,
        inp: u32,
        out: u32,
        accumulate: bool,
    ) -> Result<()> {
        let dx_shape =
            MatmulShape { m: self.n(), n: inp, k: out, trans_a: false, trans_b: false, accumulate };
        let w = w.tensors();
        self.matmul(rec, dy, &self.params.run(w.clone()), dx, &dx_shape, None)?;
        let dw_shape =
            MatmulShape { m: out, n: inp, k: self.n(), trans_a: true, trans_b: false, accumulate: true };
        self.matmul(rec, dy, x, &self.grads.run(w), &dw_shape, None)
    }

    /// The backward pass of RMSNorm weight `w` over the micro-batch: its gradient adds to `grads[w]`, and
    /// dx is written (it may then be `dy`), or added to with `add_dx`.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        rec: &mut Recorder,
        w: usize,
        dy: &GpuTensor,
        x: &GpuTensor,
        rstd: &GpuTensor,
        dx: &GpuTensor,
        add_dx: bool,
    ) -> Result<()> {
        let (params, grads, scratch) = (&self.params[w], &self.grads[w], &self.acts.scratch);
        let accumulate = Accumulate { dx: add_dx, dw: true };
        rmsnorm::backward(
            rec,
            dy,
            x,
            params,
            rstd,
            dx,
            grads,
            scratch,
            self.n(),
            self.cfg.d_model,
            accumulate,
        )
    }

    /// Records the forward pass and the loss: per-position losses, their sum in `loss_sum`, and the
    /// gradient of `scale * sum(losses)` (times the loss scale, in half precision) in place of the logits. `step_key` enables attention dropout;
    /// `predictions`, when given, receives each position's greedy (argmax) token.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        scale: f32,
        step_key: Option<u64>,
        predictions: Option<&GpuTensor>,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (n, d, v) = (self.n(), cfg.d_model, cfg.vocab_size);
        let a = &self.acts;
        match &a.body {
            Body::Transformer(t) => {
                embedding::forward(rec, &self.params[self.index.embed], &self.ids, t.input(), n, v, d)?;
                self.transformer_forward(rec, t, step_key)?;
            }
            Body::Nca(c) => {
                embedding::forward(rec, &self.params[self.index.embed], &self.ids, c.input(), n, v, d)?;
                self.nca_forward(rec, c, step_key)?;
            }
        }
        rmsnorm::forward(
            rec,
            &a.x_out,
            &self.params[self.index.final_norm],
            &a.fin,
            &a.rstd_f,
            n,
            d,
            cfg.norm_eps,
        )?;
        let head_shape = MatmulShape { m: n, n: v, k: d, trans_a: false, trans_b: true, accumulate: false };
        let bias = self.index.head_bias.map(|b| &self.params[b]);
        self.matmul(rec, &a.fin, &self.params[self.index.head], &a.logits, &head_shape, bias)?;
        if let Some(out) = predictions {
            tokens::argmax(rec, &a.logits, out, n, v)?;
        }
        let loss_scale = self.loss_scale.as_ref().map(LossScale::scale);
        cross_entropy::forward_backward(
            rec,
            &a.logits,
            &self.targets,
            &a.losses,
            n,
            v,
            scale,
            loss_scale.as_ref(),
        )?;
        reduce::sum(rec, &a.losses, &a.loss_sum, &a.scratch)
    }

    /// Records the backward pass after [`forward`](Self::forward); gradients are added to `grads`.
    pub fn backward(&self, rec: &mut Recorder, step_key: Option<u64>) -> Result<()> {
        let cfg = &self.cfg;
        let (n, d, v) = (self.n(), cfg.d_model, cfg.vocab_size);
        let a = &self.acts;
        let dlogits = &a.logits;
        if let Some(b) = self.index.head_bias {
            matmul::column_sums(rec, dlogits, &self.grads[b], n, v, true, &a.scratch)?;
        }
        self.linear_backward(rec, dlogits, &a.fin, self.index.head, &a.dfin, d, v, false)?;
        let wf = self.index.final_norm;
        self.norm_backward(rec, wf, &a.dfin, &a.x_out, &a.rstd_f, &a.dx, false)?;
        match &a.body {
            Body::Transformer(t) => self.transformer_backward(rec, t, step_key)?,
            Body::Nca(c) => self.nca_backward(rec, c, step_key)?,
        }
        embedding::backward(rec, &a.dx, &self.ids, &self.grads[self.index.embed], n, v, d, true)
    }

    /// Records zeroing every gradient.
    pub fn zero_grads(&self, rec: &mut Recorder) {
        for chunk in &self.grads.chunks {
            rec.zero(chunk);
        }
    }

    /// Records the global gradient norm (squared, into `norm_sq`) and one Adam/AdamW update of every
    /// tensor but the `frozen` ones (whose gradients it zeroes too: they have none, as in PyTorch), a
    /// dispatch per chunk; `decay_2d_only` limits weight decay to matrices. In half precision the update is
    /// skipped when the gradients overflowed, and the loss scale is updated after it.
    pub fn optimizer_step(
        &self,
        rec: &mut Recorder,
        base: &adamw::AdamParams,
        decay_2d_only: bool,
        frozen: &[usize],
    ) -> Result<()> {
        let a = &self.acts;
        // Frozen tensors have no gradient, as in PyTorch: clipping measures the trained ones only.
        for &i in frozen {
            rec.zero(&self.grads[i]);
        }
        let plan = self.optimizer_plan(decay_2d_only, frozen)?;
        plan.norm_sq(rec, &self.grads, &a.norm_sq)?;
        let loss_scale = self.loss_scale.as_ref().map(LossScale::scale);
        let (p, g, m, v) = (&self.params, &self.grads, &self.moment1, &self.moment2);
        plan.step(rec, p, g, m, v, &a.norm_sq, loss_scale.as_ref(), base)?;
        match &self.loss_scale {
            Some(scale) => scale.update(rec, &a.norm_sq),
            None => Ok(()),
        }
    }

    /// The optimiser's plan for every tensor it updates, built on first use.
    fn optimizer_plan(&self, decay_2d_only: bool, frozen: &[usize]) -> Result<Arc<adamw::Plan>> {
        let mut cached = self.optimizer_plan.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref().filter(|c| c.decay_2d_only == decay_2d_only && c.frozen == frozen) {
            return Ok(c.plan.clone());
        }
        let decay = |i: usize| (!frozen.contains(&i)).then(|| !decay_2d_only || self.infos[i].is_matrix());
        let plan = Arc::new(adamw::Plan::new(&self.gpu, &self.grads, decay)?);
        *cached = Some(OptimizerPlan { decay_2d_only, frozen: frozen.to_vec(), plan: plan.clone() });
        Ok(plan)
    }

    /// The summed loss of the last forward pass.
    pub fn loss_sum(&self) -> &GpuTensor {
        &self.acts.loss_sum
    }

    /// Per-position losses of the last forward pass (0 where the target is ignored).
    pub fn losses(&self) -> &GpuTensor {
        &self.acts.losses
    }

    /// The squared global gradient norm of the last optimiser step.
    pub fn norm_sq(&self) -> &GpuTensor {
        &self.acts.norm_sq
    }

    /// Copies parameters back to the host.
    pub fn read_params(&self) -> Result<Vec<Vec<f32>>> {
        self.params.iter().map(|t| self.gpu.read::<f32>(t)).collect()
    }

    pub fn read_grads(&self) -> Result<Vec<Vec<f32>>> {
        self.grads.iter().map(|t| self.gpu.read::<f32>(t)).collect()
    }

    pub fn read_moments(&self) -> Result<Moments> {
        let m = self.moment1.iter().map(|t| self.gpu.read::<f32>(t)).collect::<Result<_>>()?;
        let v = self.moment2.iter().map(|t| self.gpu.read::<f32>(t)).collect::<Result<_>>()?;
        Ok((m, v))
    }

    /// Replaces parameters (and optionally Adam moments), e.g. from a checkpoint.
    pub fn load(&self, params: &[Vec<f32>], moments: Option<&Moments>) -> Result<()> {
        ensure!(
            params.len() == self.params.len(),
            "expected {} parameter tensors, got {}",
            self.params.len(),
            params.len()
        );
        for (i, (t, v)) in self.params.iter().zip(params).enumerate() {
            ensure!(v.len() == t.len, "{}: {} values, expected {}", self.infos[i].name, v.len(), t.len);
            self.gpu.write(t, v);
        }
        if let Some((m, v)) = moments {
            for (i, ((tm, tv), (vm, vv))) in
                self.moment1.iter().zip(&self.moment2).zip(m.iter().zip(v)).enumerate()
            {
                ensure!(
                    vm.len() == tm.len && vv.len() == tv.len,
                    "{}: optimiser state has the wrong size",
                    self.infos[i].name
                );
                self.gpu.write(tm, vm);
                self.gpu.write(tv, vv);
            }
        }
        Ok(())
    }

    /// Uploads a micro-batch's ids and targets (host path; the NCA stream fills them on the GPU).
    pub fn set_batch(&self, ids: &[u32], targets: &[u32]) -> Result<()> {
        let n = self.n() as usize;
        ensure!(
            ids.len() == n && targets.len() == n,
            "a micro-batch needs {n} ids and targets, got {} and {}",
            ids.len(),
            targets.len()
        );
        if let Some(bad) = ids.iter().position(|&i| i >= self.cfg.vocab_size) {
            anyhow::bail!(
                "token id {} at position {bad} is not below the vocabulary size {}",
                ids[bad],
                self.cfg.vocab_size
            );
        }
        self.gpu.write(&self.ids, ids);
        self.gpu.write(&self.targets, targets);
        Ok(())
    }
}
