//! Rule fitting: recovering a hidden NCA rule from its trajectories by gradient descent through the
//! trainable 3x3 torus convolution and per-cell MLP. The hidden rule samples by Gumbel-max at a tiny
//! temperature; the fit relaxes that to a softmax and minimises the cross-entropy of each next state.

use anyhow::{ensure, Result};

use super::dataset::{search_rules, sequence_key, SearchSettings, Split};
use super::reference::rollout;
use super::{CpuSimulator, NcaSpec, Rule};
use crate::gpu::{role_arena, Gpu, KernelCache, Recorder};
use crate::model::params::{init_tensor, Init, ParamInfo};
use crate::ops::activation::{self, Activation};
use crate::ops::adamw::{self, AdamParams};
use crate::ops::conv::{self, TorusConvShape};
use crate::ops::matmul::{self, MatmulShape};
use crate::ops::{cross_entropy, reduce, tokens};
use crate::rng::derive_key;

/// How to fit.
#[derive(Clone, Debug)]
pub struct FitSettings {
    /// Simulations of the hidden rule to learn from, and frames per simulation.
    pub sims: u32,
    pub frames: u32,
    /// Width of the fitted network: convolution channels and hidden units (wider than the hidden rule).
    pub channels: u32,
    pub hidden: u32,
    pub steps: u32,
    pub lr: f32,
    pub seed: u64,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self { sims: 16, frames: 12, channels: 16, hidden: 64, steps: 400, lr: 3e-3, seed: 0 }
    }
}

/// What a fit achieved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FitReport {
    pub rule_index: u64,
    pub gzip_ratio: f64,
    pub steps: u32,
    pub final_loss: f64,
    /// Share of next-state cells the fitted rule predicts exactly on fresh trajectories of the hidden rule.
    pub accuracy: f64,
    /// The same share for always predicting the most common next state.
    pub majority_baseline: f64,
    pub cells_evaluated: u64,
}

/// (one-hot states, next states) of `sims` fresh trajectories of a rule.
fn transitions(spec: &NcaSpec, rule: &Rule, key: u64, sims: u32, frames: u32) -> (Vec<f32>, Vec<u32>) {
    let table = rule.table(spec);
    let n = spec.states as usize;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for s in 0..sims {
        let traj = rollout(spec, &table, derive_key(key, &[u64::from(s)]), frames + 1);
        for pair in traj.windows(2) {
            for (&now, &next) in pair[0].iter().zip(&pair[1]) {
                let mut one_hot = vec![0.0f32; n];
                one_hot[now as usize] = 1.0;
                x.extend(one_hot);
                y.push(u32::from(next));
            }
        }
    }
    (x, y)
}

/// Fits training rule `rule_index` of `seed` (the rule `ncalm generate --seed` would use) and reports
/// how well the fit predicts fresh trajectories.
pub fn fit_rule(
    gpu: &Gpu,
    spec: &NcaSpec,
    search: &SearchSettings,
    rule_index: u64,
    fit: &FitSettings,
    log: &mut dyn FnMut(&str),
) -> Result<FitReport> {
    ensure!(fit.sims > 0 && fit.frames > 0 && fit.steps > 0, "--sims, --frames and --steps must be positive");
    let found = search_rules(
        &CpuSimulator::new(spec)?,
        spec,
        fit.seed,
        Split::Train,
        rule_index..rule_index + 1,
        search,
        &mut |_| {},
    )?;
    let hidden = found.rules[0];
    let rule = Rule::sample(spec, hidden.key);
    let (n, g) = (spec.states, spec.grid);
    let (x, y) = transitions(spec, &rule, sequence_key(hidden.key, 1, 0), fit.sims, fit.frames);
    let cells = y.len() as u32;
    let shape = TorusConvShape { grids: cells / (g * g), grid: g, cin: n, cout: fit.channels };
    let (c, h) = (fit.channels, fit.hidden);

    // Parameters in one arena, gradients and Adam moments in three more.
    let infos = [
        ParamInfo {
            name: "conv.weight".into(),
            shape: vec![9, n as usize, c as usize],
            init: Init::Normal((1.0 / (9.0 * n as f32)).sqrt()),
        },
        ParamInfo { name: "conv.bias".into(), shape: vec![c as usize], init: Init::Zeros },
        ParamInfo {
            name: "hidden.weight".into(),
            shape: vec![h as usize, c as usize],
            init: Init::Normal((1.0 / c as f32).sqrt()),
        },
        ParamInfo { name: "hidden.bias".into(), shape: vec![h as usize], init: Init::Zeros },
        ParamInfo {
            name: "out.weight".into(),
            shape: vec![n as usize, h as usize],
            init: Init::Normal((1.0 / h as f32).sqrt()),
        },
        ParamInfo { name: "out.bias".into(), shape: vec![n as usize], init: Init::Zeros },
    ];
    let tensors = || infos.iter().map(|i| (i.name.as_str(), i.len()));
    let params = role_arena(gpu, "fit params", tensors())?;
    let grads = role_arena(gpu, "fit grads", tensors())?;
    let m1 = role_arena(gpu, "fit m", tensors())?;
    let m2 = role_arena(gpu, "fit v", tensors())?;
    let optimizer = adamw::Plan::new(gpu, &grads, |_| Some(false))?;
    for (i, (info, t)) in infos.iter().zip(&params).enumerate() {
        gpu.write(t, &init_tensor(info, derive_key(fit.seed, &[0xf17, i as u64])));
    }
    let xs = gpu.upload(&x, "fit states")?;
    let ys = gpu.upload(&y, "fit next states")?;
    let t = |len: u32, label: &str| gpu.tensor(len as usize, label);
    let (conv_out, pre, act, logits, losses) = (
        t(cells * c, "conv")?,
        t(cells * h, "pre")?,
        t(cells * h, "act")?,
        t(cells * n, "logits")?,
        t(cells, "losses")?,
    );
    let (d_act, d_conv, dx) = (t(cells * h, "d act")?, t(cells * c, "d conv")?, t(cells * n, "d states")?);
    let scratch_len = conv::torus_scratch_len(&shape)
        .max(matmul::column_sums_scratch_len(cells, h))
        .max(reduce::scratch_len(cells as usize));
    let (scratch, loss_sum, norm_sq, preds) =
        (gpu.tensor(scratch_len, "scratch")?, t(1, "loss")?, t(1, "norm")?, t(cells, "predictions")?);
    let cache = KernelCache::default();
    let linear = |m: u32, inp: u32, out: u32| MatmulShape {
        m,
        n: out,
        k: inp,
        trans_a: false,
        trans_b: true,
        accumulate: false,
    };

    // One pass: forward, loss and (with `train`) backward and an Adam step.
    let pass = |rec: &mut Recorder, train: bool, step: u64, lr: f32| -> Result<()> {
        conv::torus_forward(rec, &xs, &params[0], &params[1], &conv_out, &shape)?;
        matmul::matmul(rec, &conv_out, &params[2], &pre, &linear(cells, c, h), Some(&params[3]))?;
        activation::forward(rec, &pre, &act, Activation::Relu)?;
        matmul::matmul(rec, &act, &params[4], &logits, &linear(cells, h, n), Some(&params[5]))?;
        tokens::argmax(rec, &logits, &preds, cells, n)?;
        cross_entropy::forward_backward(rec, &logits, &ys, &losses, cells, n, 1.0 / cells as f32, None)?;
        reduce::sum(rec, &losses, &loss_sum, &scratch)?;
        if !train {
            return Ok(());
        }
        for chunk in &grads.chunks {
            rec.zero(chunk);
        }
        let dlogits = &logits;
        matmul::column_sums(rec, dlogits, &grads[5], cells, n, false, &scratch)?;
        matmul::matmul(
            rec,
            dlogits,
            &act,
            &grads[4],
            &MatmulShape { m: n, n: h, k: cells, trans_a: true, trans_b: false, accumulate: false },
            None,
        )?;
        matmul::matmul(
            rec,
            dlogits,
            &params[4],
            &d_act,
            &MatmulShape { m: cells, n: h, k: n, trans_a: false, trans_b: false, accumulate: false },
            None,
        )?;
        activation::backward(rec, &pre, &d_act, &d_act, Activation::Relu)?;
        matmul::column_sums(rec, &d_act, &grads[3], cells, h, false, &scratch)?;
        matmul::matmul(
            rec,
            &d_act,
            &conv_out,
            &grads[2],
            &MatmulShape { m: h, n: c, k: cells, trans_a: true, trans_b: false, accumulate: false },
            None,
        )?;
        matmul::matmul(
            rec,
            &d_act,
            &params[2],
            &d_conv,
            &MatmulShape { m: cells, n: c, k: h, trans_a: false, trans_b: false, accumulate: false },
            None,
        )?;
        conv::torus_backward(
            rec, &d_conv, &xs, &params[0], &dx, &grads[0], &grads[1], &scratch, &shape, false,
        )?;
        optimizer.norm_sq(rec, &grads, &norm_sq)?;
        let adam = AdamParams {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
            max_norm: 1.0,
            grad_scale: 1.0,
            step,
        };
        optimizer.step(rec, &params, &grads, &m1, &m2, &norm_sq, None, &adam)
    };
    let mut final_loss = f64::NAN;
    for step in 1..=u64::from(fit.steps) {
        let mut rec = Recorder::new(gpu, &cache);
        // Cosine decay to a tenth: large early steps, then settle.
        let progress = step as f64 / f64::from(fit.steps);
        let lr = (f64::from(fit.lr) * (0.1 + 0.45 * (1.0 + (std::f64::consts::PI * progress).cos()))) as f32;
        pass(&mut rec, true, step, lr)?;
        rec.submit();
        if step % 100 == 0 || step == u64::from(fit.steps) {
            final_loss = f64::from(gpu.read::<f32>(&loss_sum)?[0]) / f64::from(cells);
            log(&format!("step {step:>5} | loss {final_loss:.4}"));
        }
    }

    // Fresh trajectories of the hidden rule the fit never saw.
    let (ex, ey) = transitions(spec, &rule, sequence_key(hidden.key, 2, 0), fit.sims, fit.frames);
    gpu.write(&xs, &ex);
    gpu.write(&ys, &ey);
    let mut rec = Recorder::new(gpu, &cache);
    pass(&mut rec, false, 0, 0.0)?;
    rec.submit();
    let predicted: Vec<u32> = gpu.read(&preds)?;
    let correct = predicted.iter().zip(&ey).filter(|(p, t)| p == t).count();
    let mut counts = vec![0usize; n as usize];
    ey.iter().for_each(|&s| counts[s as usize] += 1);
    let majority = *counts.iter().max().unwrap_or(&0);
    Ok(FitReport {
        rule_index,
        gzip_ratio: hidden.ratio,
        steps: fit.steps,
        final_loss,
        accuracy: correct as f64 / ey.len() as f64,
        majority_baseline: majority as f64 / ey.len() as f64,
        cells_evaluated: ey.len() as u64,
    })
}
