//! The whole GPU model against its f64 reference on the tiny preset: the loss and every parameter
//! gradient of one pass (attention dropout on), then the losses of ten optimiser steps.

mod common;

use ncalm::config::Preset;
use ncalm::gpu::Recorder;
use ncalm::model::config::nca_vocab;
use ncalm::model::gpu::GpuModel;
use ncalm::model::reference::{forward_backward, Batch};
use ncalm::model::HostParams;
use ncalm::ops::adamw::AdamParams;
use ncalm::ops::cross_entropy::IGNORE;
use ncalm::ops::matmul::{self, MatmulShape, Precision, Variant};
use ncalm::ops::testing::*;

fn batch(seed: u64, batch: usize, seq_len: usize, vocab: u32) -> Batch {
    let ids = randint(batch * seq_len, vocab, seed);
    let mut targets = randint(batch * seq_len, vocab, seed + 1);
    // The first positions of each sequence are masked, as the first NCA frame is.
    for s in 0..batch {
        targets[s * seq_len..s * seq_len + 5].fill(IGNORE);
    }
    Batch { ids, targets, batch, seq_len }
}

fn as_f64(values: &[Vec<f32>]) -> Vec<Vec<f64>> {
    values.iter().map(|v| to_f64(v)).collect()
}

/// The optimiser settings of the parity runs: Adam with decoupled decay and clipping at norm 1.
fn adam() -> AdamParams {
    AdamParams {
        lr: 3e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        decoupled: true,
        max_norm: 1.0,
        grad_scale: 1.0,
        step: 1,
    }
}

#[test]
fn gradients_and_ten_steps_match_the_reference() {
    let gpu = common::gpu();
    let mut preset = Preset::load("tiny", &["model.attn_dropout=0.1".into()]).unwrap();
    preset.model.vocab_size = nca_vocab(10);
    let cfg = preset.model.clone();
    let (b, t) = (2usize, 40usize);
    let host = HostParams::init(&cfg, 11);
    let model = GpuModel::new(&gpu, &cfg, &host, b as u32, t as u32).unwrap();
    let params = as_f64(&host.values);

    // One forward and backward pass with dropout.
    let data = batch(1, b, t, cfg.vocab_size);
    let (want, losses, grads) =
        common::reference_and_gpu_pass(&gpu, &model, &params, &data, Some(0xdead_beef_u64));
    assert_close_f32("per-position losses", &losses, &want.losses, 1e-4);
    let mut worst = (0.0f64, String::new());
    for (i, info) in host.infos.iter().enumerate() {
        // f32 against f64 through two layers of sums over 80 positions: entries near zero (relative to
        // the floor of 1e-3 rms) reach a few 1e-3; a wrong gradient is wrong everywhere, which the
        // mean catches.
        let e = assert_close_f32(&info.name, &grads[i], &want.grads[i], 1e-2);
        assert!(e.mean < 1e-4, "{}: mean relative error {:.2e}", info.name, e.mean);
        if e.max > worst.0 {
            worst = (e.max, info.name.clone());
        }
    }

    // Ten optimiser steps (Adam with clipping, as configured), each on a fresh batch.
    let base = adam();
    let mut reference = common::ReferenceAdam::new(params, base);
    // Weight decay on matrices only, and two tensors frozen (a norm and a projection), as a stage-2
    // ablation runs the optimiser.
    reference.decay_2d_only = true;
    reference.frozen = ["model.layers.0.input_layernorm.weight", "model.layers.1.mlp.down_proj.weight"]
        .iter()
        .map(|name| host.infos.iter().position(|i| i.name == *name).expect(name))
        .collect();
    let mut worst_loss = 0.0f64;
    for step in 1..=10u64 {
        let data = batch(100 + step, b, t, cfg.vocab_size);
        let (got_loss, want_loss) = reference.step(&gpu, &model, &data, step);
        let rel = (got_loss - want_loss).abs() / want_loss;
        println!("step {step:>2}: loss GPU {got_loss:.6}  reference {want_loss:.6}  rel diff {rel:.1e}");
        worst_loss = worst_loss.max(rel);
        assert!(rel < 1e-4, "step {step}: GPU loss {got_loss} vs reference {want_loss}");
    }
    let after = as_f64(&model.read_params().unwrap());
    for (i, info) in host.infos.iter().enumerate() {
        // Adam moves a parameter by ~lr whatever its gradient's size, so a gradient within rounding of
        // zero can move it either way: judge the parameters by their mean error, not their worst.
        let e = error_stats(&after[i], &reference.params[i]);
        println!("{:<48} after 10 steps: max rel err {:.2e}  mean {:.2e}", info.name, e.max, e.mean);
        assert!(e.mean < 1e-4, "{} after 10 steps: mean relative error {:.2e}", info.name, e.mean);
    }
    println!(
        "verdict: OK: {} gradient tensors match (worst {:.1e} in {}), 10 step losses match (worst rel diff {:.1e})",
        host.infos.len(),
        worst.0,
        worst.1,
        worst_loss
    );
}

#[test]
fn tied_embeddings_and_no_head_bias_match_the_reference() {
    let gpu = common::gpu();
    let preset = Preset::load(
        "tiny",
        &["model.tie_embeddings=true".into(), "model.head_bias=false".into(), "model.vocab_size=300".into()],
    )
    .unwrap();
    let cfg = preset.model;
    let (b, t) = (3usize, 17usize);
    let host = HostParams::init(&cfg, 5);
    assert_eq!(host.index.head, host.index.embed);
    let model = GpuModel::new(&gpu, &cfg, &host, b as u32, t as u32).unwrap();
    let data = batch(7, b, t, cfg.vocab_size);
    let scale = 1.0 / data.counted() as f64;
    let want = forward_backward(&cfg, &as_f64(&host.values), &host.index, &data, scale, None);
    model.set_batch(&data.ids, &data.targets).unwrap();
    let mut rec = Recorder::new(&gpu, &model.cache);
    model.zero_grads(&mut rec);
    model.forward(&mut rec, scale as f32, None, None).unwrap();
    model.backward(&mut rec, None).unwrap();
    rec.submit();
    let grads = model.read_grads().unwrap();
    for (i, info) in host.infos.iter().enumerate() {
        let e = assert_close_f32(&info.name, &grads[i], &want.grads[i], 1e-2);
        assert!(e.mean < 1e-4, "{}: mean relative error {:.2e}", info.name, e.mean);
    }
}

/// Mixed precision on the tiny model: the head's product takes the f16 kernel, the loss gradient is
/// scaled by 2^10 and divided out again, and five Adam steps follow the f64 reference within f16's error
/// (the logits carry ~1e-3 relative error). Then a loss scale of 1e30 overflows the gradients: the step
/// changes no parameter or moment, and the scale halves.
#[test]
fn mixed_precision_steps_follow_the_reference_and_skip_overflows() {
    let gpu = common::gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SHADER_F16) {
        println!("this adapter has no f16 arithmetic: mixed precision is not tested");
        return;
    }
    let mut cfg = Preset::load("tiny", &[]).unwrap().model;
    cfg.vocab_size = nca_vocab(10);
    let (b, t) = (3usize, 64usize);
    let tokens = (b * t) as u32;
    let head = MatmulShape {
        m: tokens,
        n: cfg.vocab_size,
        k: cfg.d_model,
        trans_a: false,
        trans_b: true,
        accumulate: false,
    };
    let picked = matmul::pick(&gpu, &head).unwrap();
    assert!(
        matches!(picked, Variant::Tile128 | Variant::Tile128K16),
        "the head takes {picked:?}, not the f16 kernel"
    );
    let host = HostParams::init(&cfg, 9);
    let mut model = GpuModel::new(&gpu, &cfg, &host, b as u32, t as u32).unwrap();
    model.set_precision(Precision::F16, 1024.0).unwrap();
    let base = adam();
    let mut reference = common::ReferenceAdam::new(as_f64(&host.values), base);
    reference.norm_tolerance = 1e-2;
    for step in 1..=5u64 {
        let data = batch(200 + step, b, t, cfg.vocab_size);
        let (got_loss, want_loss) = reference.step(&gpu, &model, &data, step);
        let rel = (got_loss - want_loss).abs() / want_loss;
        println!("f16 step {step}: loss GPU {got_loss:.6}  reference {want_loss:.6}  rel diff {rel:.1e}");
        assert!(rel < 1e-3, "step {step}: GPU loss {got_loss} vs reference {want_loss}");
    }
    let state = model.loss_scale().expect("a loss scale in f16").read(&gpu).unwrap();
    assert_eq!((state.scale, state.clean_steps, state.skipped), (1024.0, 5, 0));
    let after = as_f64(&model.read_params().unwrap());
    for (i, info) in host.infos.iter().enumerate() {
        let e = error_stats(&after[i], &reference.params[i]);
        assert!(e.mean < 1e-2, "{} after 5 f16 steps: mean relative error {:.2e}", info.name, e.mean);
    }

    let mut huge = GpuModel::new(&gpu, &cfg, &host, b as u32, t as u32).unwrap();
    huge.set_precision(Precision::F16, 1e30).unwrap();
    let data = batch(300, b, t, cfg.vocab_size);
    huge.set_batch(&data.ids, &data.targets).unwrap();
    let mut rec = Recorder::new(&gpu, &huge.cache);
    huge.zero_grads(&mut rec);
    huge.forward(&mut rec, 1.0 / data.counted() as f32, None, None).unwrap();
    huge.backward(&mut rec, None).unwrap();
    huge.optimizer_step(&mut rec, &base, false, &[]).unwrap();
    rec.submit();
    assert_eq!(huge.read_params().unwrap(), host.values, "an overflowed step moved the parameters");
    let (m, v) = huge.read_moments().unwrap();
    assert!(m.iter().chain(&v).flatten().all(|&x| x == 0.0), "an overflowed step moved the moments");
    let state = huge.loss_scale().unwrap().read(&gpu).unwrap();
    assert_eq!((state.scale, state.skipped, state.last_skipped), (5e29, 1, true));
}
