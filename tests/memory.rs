//! Training that fits where the model's buffers do not: roles split into chunks no larger than the
//! device binds give the same steps as one buffer, and recomputing each layer in the backward pass gives
//! the same gradients as keeping its activations.

mod common;

use ncalm::config::Preset;
use ncalm::gpu::Recorder;
use ncalm::model::config::{nca_vocab, ModelConfig, Recompute};
use ncalm::model::gpu::GpuModel;
use ncalm::model::HostParams;
use ncalm::ops::adamw::AdamParams;
use ncalm::ops::testing::randint;
use ncalm::Gpu;

/// Adam with decoupled decay on matrices and clipping, as the presets train.
fn adam(step: u64) -> AdamParams {
    AdamParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        decoupled: true,
        max_norm: 1.0,
        grad_scale: 1.0,
        step,
    }
}

/// What a run leaves behind: each step's loss and squared gradient norm, and the final parameters.
#[derive(Debug, PartialEq)]
struct Trace {
    losses: Vec<f32>,
    norms: Vec<f32>,
    params: Vec<Vec<f32>>,
}

/// `steps` optimiser steps of `model` on fixed random batches, with attention dropout keyed by step.
fn train(gpu: &Gpu, model: &GpuModel, steps: u64) -> Trace {
    let n = (model.batch * model.seq_len) as usize;
    let (mut losses, mut norms) = (Vec::new(), Vec::new());
    for step in 1..=steps {
        let ids = randint(n, model.cfg.vocab_size, 10 * step);
        let targets = randint(n, model.cfg.vocab_size, 10 * step + 1);
        model.set_batch(&ids, &targets).unwrap();
        let mut rec = Recorder::new(gpu, &model.cache);
        model.zero_grads(&mut rec);
        model.forward(&mut rec, 1.0 / n as f32, Some(step), None).unwrap();
        model.backward(&mut rec, Some(step)).unwrap();
        model.optimizer_step(&mut rec, &adam(step), true, &[]).unwrap();
        rec.submit();
        losses.push(gpu.read::<f32>(model.loss_sum()).unwrap()[0]);
        norms.push(gpu.read::<f32>(model.norm_sq()).unwrap()[0]);
    }
    Trace { losses, norms, params: model.read_params().unwrap() }
}

fn tiny(arch_preset: &str) -> ModelConfig {
    let preset = Preset::load(arch_preset, &["model.attn_dropout=0.1".into()]).unwrap();
    ModelConfig { vocab_size: nca_vocab(10), ..preset.model }
}

/// The tiny presets train to the same bits in one buffer per role and in chunks as small as the
/// largest tensor.
#[test]
fn the_tiny_models_train_identically_with_any_chunk_size() {
    let gpu = common::gpu();
    for name in ["tiny", "nca-tiny"] {
        let cfg = tiny(name);
        let host = HostParams::init(&cfg, 3);
        let largest = host.infos.iter().map(|i| i.len() as u64 * 4).max().unwrap();
        let total = host.total() as u64 * 4;
        let one = GpuModel::new(&gpu, &cfg, &host, 1, 24).unwrap();
        assert_eq!(one.params.chunks.len(), 1, "{name}: one buffer per role by default");
        let want = train(&gpu, &one, 3);
        // The smallest limit that holds the largest tensor (the embedding: the micro-batch's logits
        // are smaller), and one between it and the whole role.
        for limit in [largest, (largest + total) / 2] {
            let chunked_gpu = gpu.clone().with_chunk_limit(limit);
            let chunked = GpuModel::new(&chunked_gpu, &cfg, &host, 1, 24).unwrap();
            let chunks = chunked.params.chunks.len();
            println!("{name}: {total} bytes per role in chunks of at most {limit}: {chunks} chunks");
            assert!(chunks > 1, "{name}: a {limit}-byte limit splits the roles");
            assert_eq!(train(&chunked_gpu, &chunked, 3), want, "{name} in {chunks} chunks");
        }
    }
}

/// A tensor larger than one chunk is refused before any work, by name, size and limit.
#[test]
fn a_tensor_past_the_binding_limit_is_refused_by_name() {
    let gpu = common::gpu();
    let cfg = tiny("tiny");
    let host = HostParams::init(&cfg, 3);
    let err =
        GpuModel::new(&gpu.clone().with_chunk_limit(1024), &cfg, &host, 2, 24).err().unwrap().to_string();
    assert!(err.contains("model.embed_tokens.weight") && err.contains("binds at most 1024 bytes"), "{err}");
}

/// Recomputing each layer (each NCA step) from its input in the backward pass reruns the same kernels
/// on the same values with the same dropout masks: the gradients, and so every step, are the same.
#[test]
fn recomputed_layers_give_the_stored_gradients() {
    let gpu = common::gpu();
    for name in ["tiny", "nca-tiny"] {
        let cfg = tiny(name);
        let host = HostParams::init(&cfg, 5);
        let stored = GpuModel::new(&gpu, &cfg, &host, 2, 24).unwrap();
        let recomputed = GpuModel::with_recompute(&gpu, &cfg, &host, 2, 24, Recompute::Layer).unwrap();
        let n = 48;
        let (ids, targets) = (randint(n, cfg.vocab_size, 1), randint(n, cfg.vocab_size, 2));
        let mut grads = Vec::new();
        for model in [&stored, &recomputed] {
            model.set_batch(&ids, &targets).unwrap();
            let mut rec = Recorder::new(&gpu, &model.cache);
            model.zero_grads(&mut rec);
            model.forward(&mut rec, 1.0 / n as f32, Some(9), None).unwrap();
            model.backward(&mut rec, Some(9)).unwrap();
            rec.submit();
            grads.push(model.read_grads().unwrap());
        }
        for (i, info) in host.infos.iter().enumerate() {
            assert_eq!(
                grads[0][i], grads[1][i],
                "{name}: the gradient of {} differs when recomputed",
                info.name
            );
        }
        assert_eq!(train(&gpu, &recomputed, 3), train(&gpu, &stored, 3), "{name}: recomputed steps differ");
    }
}

/// A model whose every role passes lavapipe's 128 MiB storage binding (34M parameters) trains on it,
/// in as many chunks as the device needs, and matches the same model in forced 32 MiB chunks step for
/// step.
#[test]
fn roles_larger_than_one_binding_train_chunk_by_chunk() {
    let gpu = common::gpu();
    let cfg = ModelConfig {
        vocab_size: 512,
        layers: 2,
        d_model: 1024,
        heads: 8,
        mlp_hidden: 4096,
        context: 16,
        attn_dropout: 0.1,
        ..ModelConfig::default()
    };
    let host = HostParams::init(&cfg, 7);
    let bytes = host.total() as u64 * 4;
    assert!(bytes > 128 << 20, "every role holds {bytes} bytes, past 128 MiB");
    let model = GpuModel::with_recompute(&gpu, &cfg, &host, 1, 16, Recompute::Layer).unwrap();
    let chunks = model.params.chunks.len();
    println!("{bytes} bytes per role; this device binds {} bytes: {chunks} chunk(s)", gpu.chunk_bytes());
    assert!(chunks as u64 >= bytes.div_ceil(gpu.chunk_bytes()));
    let want = train(&gpu, &model, 2);
    drop(model);
    let small = gpu.clone().with_chunk_limit(32 << 20);
    let chunked = GpuModel::with_recompute(&small, &cfg, &host, 1, 16, Recompute::Layer).unwrap();
    assert!(chunked.params.chunks.len() >= 5);
    assert_eq!(train(&small, &chunked, 2), want);
}
