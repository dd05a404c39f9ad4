//! The NCA language model (docs/nca-lm.md): its f64 reference against finite differences through all K
//! steps, then the GPU model's loss and every parameter gradient against the reference, with per-step and
//! shared weights, a stochastic fire mask and with states recomputed in the backward pass.

mod common;

use ncalm::config::Preset;
use ncalm::model::config::Arch;
use ncalm::model::gpu::GpuModel;
use ncalm::model::reference::{forward_backward, Batch};
use ncalm::model::{HostParams, ModelConfig};
use ncalm::ops::activation::Activation;
use ncalm::ops::adamw::AdamParams;
use ncalm::ops::cross_entropy::IGNORE;
use ncalm::ops::testing::*;

fn batch(seed: u64, batch: usize, seq_len: usize, vocab: u32) -> Batch {
    let ids = randint(batch * seq_len, vocab, seed);
    let mut targets = randint(batch * seq_len, vocab, seed + 1);
    targets[1] = IGNORE;
    Batch { ids, targets, batch, seq_len }
}

fn as_f64(values: &[Vec<f32>]) -> Vec<Vec<f64>> {
    values.iter().map(|v| to_f64(v)).collect()
}

fn nca(shared_steps: bool, fire_rate: f32, recompute: bool) -> ModelConfig {
    ModelConfig {
        vocab_size: 37,
        d_model: 12,
        mlp_hidden: 20,
        context: 64,
        arch: Arch::Nca,
        steps: 3,
        kernel_width: 3,
        shared_steps,
        activation: Activation::Silu,
        fire_rate,
        recompute,
        head_bias: true,
        ..Default::default()
    }
}

#[test]
fn reference_gradients_match_finite_differences_through_every_step() {
    for shared in [false, true] {
        let cfg = nca(shared, 0.6, false);
        let host = HostParams::init(&cfg, 3);
        // Larger weights than the 0.02 initialisation, so every step's update matters to the loss.
        let params: Vec<Vec<f64>> =
            host.values.iter().enumerate().map(|(i, v)| randn(v.len(), 40 + i as u64)).collect();
        let data = batch(7, 2, 9, cfg.vocab_size);
        let key = Some(0x5eed);
        let pass = forward_backward(&cfg, &params, &host.index, &data, 1.0, key);
        for (i, info) in host.infos.iter().enumerate() {
            let loss = |x: &[f64]| {
                let mut p = params.clone();
                p[i] = x.to_vec();
                forward_backward(&cfg, &p, &host.index, &data, 1.0, key).losses.iter().sum::<f64>()
            };
            let fd = finite_difference(&loss, &params[i], 1e-5);
            assert_close(&format!("shared {shared}: {}", info.name), &pass.grads[i], &fd, 1e-5);
        }
    }
}

#[test]
fn gpu_gradients_and_steps_match_the_reference() {
    let gpu = common::gpu();
    let (b, t) = (2usize, 21usize);
    for (shared, fire_rate, recompute) in [(false, 1.0, false), (true, 0.6, false), (false, 0.6, true)] {
        let cfg = nca(shared, fire_rate, recompute);
        let tag = format!("shared {shared}, fire rate {fire_rate}, recompute {recompute}");
        let host = HostParams::init(&cfg, 11);
        let model = GpuModel::new(&gpu, &cfg, &host, b as u32, t as u32).unwrap();
        let params = as_f64(&host.values);
        let data = batch(1, b, t, cfg.vocab_size);
        let (want, losses, grads) =
            common::reference_and_gpu_pass(&gpu, &model, &params, &data, Some(0xdead_beef_u64));
        assert_close_f32(&format!("{tag}: losses"), &losses, &want.losses, 1e-4);
        for (i, info) in host.infos.iter().enumerate() {
            let e = assert_close_f32(&format!("{tag}: {}", info.name), &grads[i], &want.grads[i], 1e-2);
            assert!(e.mean < 1e-4, "{tag}: {}: mean relative error {:.2e}", info.name, e.mean);
        }

        // Five Adam steps with fresh batches and fire masks.
        let base = AdamParams {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
            max_norm: 0.0,
            grad_scale: 1.0,
            step: 1,
        };
        let mut reference = common::ReferenceAdam::new(params, base);
        for step in 1..=5u64 {
            let data = batch(100 + step, b, t, cfg.vocab_size);
            let (got_loss, want_loss) = reference.step(&gpu, &model, &data, step);
            let rel = (got_loss - want_loss).abs() / want_loss;
            println!(
                "{tag}: step {step}: loss GPU {got_loss:.6} reference {want_loss:.6} rel diff {rel:.1e}"
            );
            assert!(rel < 1e-4, "{tag}: step {step}: GPU loss {got_loss} vs reference {want_loss}");
        }
    }
}

#[test]
fn presets_describe_the_receptive_field() {
    let p = Preset::load("nca-small", &[]).unwrap();
    assert_eq!(p.model.arch, Arch::Nca);
    assert_eq!(p.model.receptive_field(), 16 * 7 + 1);
    assert!(p.model.describe().contains("receptive field 113 tokens"), "{}", p.model.describe());
    let bad = Preset::load("nca-tiny", &["model.fire_rate=0".into()]).unwrap();
    let err = ModelConfig { vocab_size: 10, ..bad.model }.validate().unwrap_err().to_string();
    assert!(err.contains("model.fire_rate"), "{err}");
}

#[test]
fn host_generator_matches_the_reference_logits() {
    use ncalm::model::infer::Generator;
    let cfg = nca(false, 0.5, false);
    let host = HostParams::init(&cfg, 5);
    let params: Vec<Vec<f64>> =
        host.values.iter().enumerate().map(|(i, v)| randn(v.len(), 70 + i as u64)).collect();
    let host =
        HostParams { values: params.iter().map(|v| v.iter().map(|&x| x as f32).collect()).collect(), ..host };
    let t = 12;
    let data = batch(3, 1, t, cfg.vocab_size);
    let want = forward_backward(&cfg, &params, &host.index, &data, 1.0, None).logits;
    let v = cfg.vocab_size as usize;
    let mut generator = Generator::new(&cfg, host);
    for (pos, &id) in data.ids.iter().enumerate() {
        let got = generator.step(id).unwrap();
        assert_close_f32(&format!("logits at position {pos}"), &got, &want[pos * v..(pos + 1) * v], 1e-4);
    }
}

#[test]
fn info_summarises_the_model() {
    let out = common::ok(&["info", "--preset", "nca-tiny", "--set", "model.steps=6"]);
    assert!(out.contains("receptive field: 19 tokens; attention-free"), "{out}");
    let out = common::ok(&["info", "--preset", "tiny"]);
    assert!(out.contains("receptive field: 64 tokens; attention's cost"), "{out}");
}

/// (step, loss) of every logged training step of a run.
fn losses(run: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

#[test]
fn learns_the_default_corpus_and_samples_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("code");
    common::ok(&["tokenize", "--default-corpus", "--tokenizer", "bytes", "--out", data.to_str().unwrap()]);
    let run = tmp.path().join("run");
    #[rustfmt::skip]
    let log = common::ok(&[
        "train", "--stage", "text", "--preset", "nca-tiny", "--data", data.to_str().unwrap(),
        "--steps", "60", "--set", "text.log_every=5", "--out", run.to_str().unwrap(),
    ]);
    assert!(log.contains("receptive field 13 tokens") && log.contains("val perplexity"), "{log}");
    let curve = losses(&run);
    let (first, last) = (curve[0].1, curve[curve.len() - 1].1);
    println!("NCA language model on the default corpus: loss {first:.3} -> {last:.3} over {curve:?}");
    assert!(last < first - 1.0, "the loss did not fall: {curve:?}");
    let text = common::ok(&["sample", run.to_str().unwrap(), "--prompt", "fn ", "--max-tokens", "30"]);
    assert!(text.starts_with("fn "), "{text}");
    // Its blocks cannot start a transformer.
    #[rustfmt::skip]
    common::fails(
        &["train", "--stage", "text", "--preset", "tiny", "--init", run.to_str().unwrap(), "--data",
          data.to_str().unwrap(), "--out", tmp.path().join("wrong").to_str().unwrap()],
        "the stage-1 checkpoint's architecture is nca but the preset's is transformer",
    );
}
