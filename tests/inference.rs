//! Generation on the GPU: each decode kernel against its reference, the GPU generator's logits and
//! greedy tokens against the host `Generator` for both architectures, one host encoder against separate
//! submissions, and `ncalm sample` on a small checkpoint.

mod common;

use ncalm::gpu::{GpuTensor, KernelCache, Recorder};
use ncalm::model::config::Arch;
use ncalm::model::gpu::GpuModel;
use ncalm::model::infer::{sample, Generator, GpuGenerator, Sampling};
use ncalm::model::{HostParams, ModelConfig};
use ncalm::ops::activation::Activation;
use ncalm::ops::decode::{self, CacheShape, SampleParams};
use ncalm::ops::rope;
use ncalm::ops::testing::*;
use ncalm::Gpu;

fn transformer() -> ModelConfig {
    ModelConfig {
        vocab_size: 50,
        layers: 2,
        d_model: 16,
        heads: 2,
        mlp_hidden: 24,
        context: 12,
        head_bias: true,
        // Spread logits: near-ties would make greedy decoding depend on rounding.
        init_std: 0.3,
        ..Default::default()
    }
}

fn nca() -> ModelConfig {
    ModelConfig {
        vocab_size: 37,
        d_model: 12,
        mlp_hidden: 20,
        context: 12,
        arch: Arch::Nca,
        steps: 3,
        kernel_width: 3,
        activation: Activation::Silu,
        head_bias: true,
        init_std: 0.3,
        ..Default::default()
    }
}

/// Parameters with every tensor (norm gains and biases too) random, so that each matters.
fn params(cfg: &ModelConfig, seed: u64) -> HostParams {
    let mut host = HostParams::init(cfg, seed);
    for (i, v) in host.values.iter_mut().enumerate() {
        let scale = if host.infos[i].shape.len() == 1 { 0.3 } else { 0.0 };
        let noise = randn(v.len(), seed * 100 + i as u64);
        v.iter_mut().zip(noise).for_each(|(x, n)| *x += (scale * n) as f32);
    }
    host
}

fn upload(gpu: &Gpu, v: &[f64], label: &str) -> GpuTensor {
    gpu.upload(&to_f32(v), label).unwrap()
}

const GREEDY: Sampling = Sampling { temperature: 0.0, top_p: 1.0, seed: 0 };

#[test]
fn kernels_match_their_references() {
    for (build, gpu) in common::reduction_gpus() {
        let cache = KernelCache::default();
        // matvec: rows that fill no workgroup evenly, with bias, then accumulating.
        let (rows, cols) = (37usize, 300usize);
        let (w, x, b, y0) = (randn(rows * cols, 1), randn(cols, 2), randn(rows, 3), randn(rows, 4));
        let (gw, gx, gb) = (upload(&gpu, &w, "w"), upload(&gpu, &x, "x"), upload(&gpu, &b, "b"));
        let (y, acc) = (gpu.tensor(rows, "y").unwrap(), upload(&gpu, &y0, "acc"));
        // Attention over a cache of which 7 rows are in use (position 6).
        let (heads, hd, capacity, pos) = (3u32, 8u32, 10u32, 6u32);
        let d = (heads * hd) as usize;
        let shape = CacheShape { heads, head_dim: hd, capacity };
        let (q, k, v) = (randn(d, 5), randn(d, 6), randn(d, 7));
        let (keys, values) = (randn(capacity as usize * d, 8), randn(capacity as usize * d, 9));
        let qkv = upload(&gpu, &[q.as_slice(), &k, &v].concat(), "qkv");
        let (ck, cv) = (upload(&gpu, &keys, "keys"), upload(&gpu, &values, "values"));
        let inv_freq = gpu.upload(&rope::inverse_frequencies(hd, 10_000.0), "inv freq").unwrap();
        let scores = gpu.tensor((heads * capacity) as usize, "scores").unwrap();
        let o = gpu.tensor(d, "o").unwrap();
        let state = gpu.upload(&[pos, 0, 0, 0], "state").unwrap();
        // The NCA's perception at position 6 with a width of 4, after cells 0..=5 went through the ring.
        let (dim, width) = (40usize, 4u32);
        let cells = randn(7 * dim, 10);
        let (kernel, conv_bias) = (randn(width as usize * dim, 11), randn(dim, 12));
        let (gkernel, gconv_bias) = (upload(&gpu, &kernel, "kernel"), upload(&gpu, &conv_bias, "conv bias"));
        let ring = gpu.tensor(width as usize * dim, "ring").unwrap();
        let perception = gpu.tensor(dim, "perception").unwrap();
        let cell_state = gpu.tensor(4, "cell state").unwrap();
        let mut rec = Recorder::new(&gpu, &cache);
        decode::matvec(&mut rec, &gw, &gx, Some(&gb), &y, false).unwrap();
        decode::matvec(&mut rec, &gw, &gx, None, &acc, true).unwrap();
        decode::rope_append(&mut rec, &qkv, &ck, &cv, &inv_freq, &state, shape).unwrap();
        decode::attention(&mut rec, &qkv, &ck, &cv, &scores, &o, &state, shape).unwrap();
        rec.submit();
        for t in 0..7 {
            gpu.write(&cell_state, &[t as u32, 0, 0, 0]);
            let cell = upload(&gpu, &cells[t * dim..(t + 1) * dim], "cell");
            let mut rec = Recorder::new(&gpu, &cache);
            decode::perceive(&mut rec, &cell, &gkernel, &gconv_bias, &ring, &perception, &cell_state, width)
                .unwrap();
            rec.submit();
            gpu.wait().unwrap();
        }
        let want: Vec<f64> = decode::reference::matvec(&w, &x).iter().zip(&b).map(|(a, b)| a + b).collect();
        assert_close_f32(&format!("matvec + bias ({build})"), &gpu.read(&y).unwrap(), &want, 1e-5);
        let want: Vec<f64> = decode::reference::matvec(&w, &x).iter().zip(&y0).map(|(a, b)| a + b).collect();
        assert_close_f32(&format!("matvec accumulating ({build})"), &gpu.read(&acc).unwrap(), &want, 1e-5);
        // RoPE at the position, by the rotate-half rule.
        let rotate = |v: &[f64]| -> Vec<f64> {
            let inv: Vec<f64> =
                rope::inverse_frequencies(hd, 10_000.0).iter().map(|&f| f64::from(f)).collect();
            let (h, half) = (hd as usize, hd as usize / 2);
            let mut out = v.to_vec();
            for head in 0..heads as usize {
                for i in 0..half {
                    let (s, c) = (f64::from(pos) * inv[i]).sin_cos();
                    let (a, b) = (v[head * h + i], v[head * h + i + half]);
                    out[head * h + i] = a * c - b * s;
                    out[head * h + i + half] = b * c + a * s;
                }
            }
            out
        };
        let (q_rot, k_rot) = (rotate(&q), rotate(&k));
        let qkv_after: Vec<f32> = gpu.read(&qkv).unwrap();
        assert_close_f32(&format!("rope q ({build})"), &qkv_after[..d], &q_rot, 1e-5);
        // The key and value are read, not changed.
        assert_close_f32(&format!("k and v ({build})"), &qkv_after[d..], &[k.as_slice(), &v].concat(), 1e-6);
        let (mut keys, mut values) = (keys, values);
        let row = pos as usize * d..(pos as usize + 1) * d;
        keys[row.clone()].copy_from_slice(&k_rot);
        values[row].copy_from_slice(&v);
        assert_close_f32(&format!("cached keys ({build})"), &gpu.read(&ck).unwrap(), &keys, 1e-5);
        assert_close_f32(&format!("cached values ({build})"), &gpu.read(&cv).unwrap(), &values, 1e-6);
        let n = (pos as usize + 1) * d;
        let want = decode::reference::attention(&q_rot, &keys[..n], &values[..n], heads as usize);
        // f32 sums leave absolute errors near 1e-7 here, which elements near zero turn into relative
        // errors near 1e-4 (see tests/ops_attention.rs for the same bound).
        assert_close_f32(&format!("attention ({build})"), &gpu.read(&o).unwrap(), &want, 1e-3);
        let want = decode::reference::perceive(&cells, &kernel, &conv_bias, width as usize);
        assert_close_f32(&format!("perception ({build})"), &gpu.read(&perception).unwrap(), &want, 1e-5);
    }
}

/// The GPU sampler's picks, one per key, from `logits` (each draw advances the state's position).
fn gpu_picks(gpu: &Gpu, logits: &[f32], temperature: f32, top_p: f32, keys: &[u64]) -> Vec<u32> {
    let cache = KernelCache::default();
    let gl = gpu.upload(logits, "logits").unwrap();
    let tokens = gpu.tensor(keys.len() + 1, "tokens").unwrap();
    let state = gpu.upload(&[0u32, 0, 0, 0], "state").unwrap();
    let mut rec = Recorder::new(gpu, &cache);
    for &key in keys {
        let s = SampleParams { temperature, top_p, key, allowed: logits.len() as u32 };
        decode::sample(&mut rec, &gl, &tokens, &state, s).unwrap();
    }
    rec.submit();
    assert_eq!(gpu.read::<u32>(&state).unwrap()[0], keys.len() as u32, "every draw advances the position");
    gpu.read::<u32>(&tokens).unwrap()[1..].to_vec()
}

#[test]
fn the_sampler_matches_its_reference() {
    for (build, gpu) in common::reduction_gpus() {
        let vocab = 1000;
        let logits: Vec<f32> = randn(vocab, 20).iter().map(|&z| (3.0 * z) as f32).collect();
        let keys: Vec<u64> = (0..64).map(|i| ncalm::rng::derive_key(9, &[i])).collect();
        let argmax = decode::reference::sample(&logits, 0.0, 1.0, 0).token;
        assert_eq!(gpu_picks(&gpu, &logits, 0.0, 1.0, &keys[..2]), [argmax, argmax], "greedy ({build})");
        let mut ties = logits.clone();
        ties[argmax as usize + 1] = ties[argmax as usize];
        ties[argmax as usize + 2] = ties[argmax as usize];
        assert_eq!(gpu_picks(&gpu, &ties, 0.0, 1.0, &keys[..1]), [argmax], "a tie goes to the lower index");
        assert_eq!(
            gpu_picks(&gpu, &logits, 1.0, 1e-4, &keys),
            vec![argmax; keys.len()],
            "top-p this small keeps only the best token ({build})"
        );
        for (t, p) in [(0.8f32, 0.9f32), (1.5, 1.0), (1.0, 0.5)] {
            let got = gpu_picks(&gpu, &logits, t, p, &keys);
            let (mut checked, mut distinct) = (0, std::collections::HashSet::new());
            for (key, &g) in keys.iter().zip(&got) {
                let want = decode::reference::sample(&logits, t, p, *key);
                distinct.insert(g);
                // GPU logarithms move the Gumbel noise by ~1e-4: only a near-tie may differ.
                if want.margin > 1e-3 {
                    assert_eq!(g, want.token, "T {t}, top-p {p}, key {key} ({build}): {want:?}");
                    checked += 1;
                }
            }
            assert!(checked >= 60, "T {t}, top-p {p}: only {checked} clear draws");
            assert!(distinct.len() > 1, "T {t}, top-p {p}: the draws do not vary: {distinct:?}");
        }
    }
}

/// The host generator's logits at every position of `ids`, and the GPU generator's, prompt = `ids`.
fn logits_both_ways(gpu: &Gpu, cfg: &ModelConfig, host: &HostParams, ids: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut reference = Generator::new(cfg, host.clone());
    let want: Vec<f32> = ids.iter().flat_map(|&t| reference.step(t).unwrap()).collect();
    let mut generator = GpuGenerator::new(gpu, cfg, host, GREEDY).unwrap();
    generator.set_prompt(ids).unwrap();
    let mut got = Vec::new();
    for _ in ids {
        generator.generate(1).unwrap();
        got.extend(gpu.read::<f32>(generator.logits()).unwrap());
    }
    assert_eq!(generator.position(), ids.len() as u32);
    (got, want)
}

#[test]
fn logits_at_every_position_equal_the_host_generators() {
    let gpu = common::gpu();
    for cfg in [transformer(), nca()] {
        let host = params(&cfg, 4);
        let ids: Vec<u32> = (0..10).map(|i| (i * 7 + 3) % cfg.vocab_size).collect();
        let (got, want) = logits_both_ways(&gpu, &cfg, &host, &ids);
        assert_close_f32(&format!("{} logits", cfg.arch.name()), &got, &to_f64(&want), 1e-3);
    }
}

#[test]
fn greedy_generation_equals_the_hosts_token_for_token() {
    let gpu = common::gpu();
    for cfg in [transformer(), nca()] {
        let host = params(&cfg, 5);
        let prompt = [3u32, 1, 4];
        let mut reference = Generator::new(&cfg, host.clone());
        let mut want = prompt.to_vec();
        let mut logits = Vec::new();
        for &t in &prompt {
            logits = reference.step(t).unwrap();
        }
        while want.len() < cfg.context as usize {
            let next = sample(&logits, &GREEDY, want.len() as u64, cfg.vocab_size as usize);
            want.push(next);
            if want.len() < cfg.context as usize {
                logits = reference.step(next).unwrap();
            }
        }
        let mut generator = GpuGenerator::new(&gpu, &cfg, &host, GREEDY).unwrap();
        generator.set_prompt(&prompt).unwrap();
        generator.generate(cfg.context - 1).unwrap();
        assert_eq!(generator.read_tokens().unwrap(), want, "{}", cfg.arch.name());
        // The last token may still be fed (its logits computed), but nothing follows it.
        generator.generate(1).unwrap();
        assert_eq!(generator.read_tokens().unwrap(), want);
        let err = generator.generate(1).unwrap_err().to_string();
        assert!(err.contains("run past the 12 tokens"), "{err}");
        if cfg.arch == Arch::Nca {
            assert!(err.contains("no positional limit"), "{err}");
        }
    }
}

#[test]
fn steps_recorded_into_one_host_encoder_equal_separate_submissions() {
    let gpu = common::gpu();
    let cfg = transformer();
    let host = params(&cfg, 6);
    let sampling = Sampling { temperature: 1.0, top_p: 0.9, seed: 11 };
    let prompt = [5u32, 9];
    let mut one = GpuGenerator::new(&gpu, &cfg, &host, sampling).unwrap();
    one.set_prompt(&prompt).unwrap();
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    one.record(&mut encoder, 8).unwrap();
    gpu.queue.submit([encoder.finish()]);
    let mut separate = GpuGenerator::new(&gpu, &cfg, &host, sampling).unwrap();
    separate.set_prompt(&prompt).unwrap();
    for _ in 0..8 {
        separate.generate(1).unwrap();
    }
    let tokens = one.read_tokens().unwrap();
    assert_eq!(tokens.len(), 9);
    assert_eq!(tokens, separate.read_tokens().unwrap());
    // Starting over gives the same draws again.
    one.set_prompt(&prompt).unwrap();
    one.generate(8).unwrap();
    assert_eq!(one.read_tokens().unwrap(), tokens);

    // Clear errors.
    let err = |r: anyhow::Result<()>| r.unwrap_err().to_string();
    assert!(err(one.set_prompt(&[])).contains("empty"));
    assert!(err(one.set_prompt(&[1; 13])).contains("exceeds the context of 12"));
    assert!(err(one.set_prompt(&[1, 50])).contains("not below the vocabulary size 50"));
    one.set_prompt(&[1; 12]).unwrap();
    assert!(err(one.generate(13)).contains("run past"));
}

#[test]
fn a_training_models_parameters_serve_the_generator_without_a_copy() {
    let gpu = common::gpu();
    let cfg = transformer();
    let host = params(&cfg, 7);
    let model = GpuModel::new(&gpu, &cfg, &host, 1, 8).unwrap();
    let mut shared = GpuGenerator::from_model(&model, GREEDY).unwrap();
    let mut own = GpuGenerator::new(&gpu, &cfg, &host, GREEDY).unwrap();
    for g in [&mut shared, &mut own] {
        g.set_prompt(&[2, 7, 1]).unwrap();
        g.generate(6).unwrap();
    }
    assert_eq!(shared.read_tokens().unwrap(), own.read_tokens().unwrap());
    assert_eq!(gpu.read::<f32>(shared.logits()).unwrap(), gpu.read::<f32>(own.logits()).unwrap());
}

#[test]
fn ncalm_sample_generates_from_a_checkpoint() {
    use ncalm::train::checkpoint::{self, Checkpoint, TrainerState};
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ModelConfig {
        vocab_size: 260,
        layers: 1,
        d_model: 16,
        heads: 2,
        mlp_hidden: 32,
        context: 48,
        ..transformer()
    };
    let host = params(&cfg, 8);
    let state = TrainerState { step: 1, tokens: 0, settings: serde_json::json!({}), loss_scale: None };
    let ck = Checkpoint { config: cfg.clone(), params: host.values.clone(), moments: None, state };
    let run = tmp.path().join("run");
    checkpoint::save(&run, &host.infos, &ck).unwrap();
    let run = run.to_str().unwrap();
    let greedy = ["sample", run, "--prompt", "fn a", "--max-tokens", "40", "--temperature", "0"];
    let text = common::ok(&greedy);
    assert!(text.starts_with("fn a") && text.len() > 5, "{text}");
    assert_eq!(common::ok(&greedy), text, "greedy sampling repeats");
    let warm = common::ok(&["sample", run, "--prompt", "fn a", "--max-tokens", "40", "--seed", "3"]);
    assert!(warm.starts_with("fn a"), "{warm}");
    common::fails(&["sample", run, "--max-tokens", "48"], "exceed the model's context of 48");
}

#[test]
fn a_long_generation_spans_several_parameter_buffers() {
    let gpu = common::gpu();
    // 4 layers: 52 dispatches a step, at least 64 bytes of parameters each, so one recorder's 1 MiB holds
    // at most 315 steps and these 399 need two.
    let cfg = ModelConfig { layers: 4, context: 400, ..transformer() };
    let host = params(&cfg, 9);
    let sampling = Sampling { temperature: 1.0, top_p: 0.95, seed: 2 };
    let mut whole = GpuGenerator::new(&gpu, &cfg, &host, sampling).unwrap();
    whole.set_prompt(&[1, 2]).unwrap();
    whole.generate(399).unwrap();
    let mut parts = GpuGenerator::new(&gpu, &cfg, &host, sampling).unwrap();
    parts.set_prompt(&[1, 2]).unwrap();
    for steps in [100, 1, 250, 48] {
        parts.generate(steps).unwrap();
    }
    let tokens = whole.read_tokens().unwrap();
    assert_eq!(tokens.len(), 400);
    assert_eq!(tokens, parts.read_tokens().unwrap());
}

#[test]
fn a_recording_into_a_host_encoder_refuses_to_overflow() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (w, x, y) = (gpu.tensor(4, "w").unwrap(), gpu.tensor(2, "x").unwrap(), gpu.tensor(2, "y").unwrap());
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    let mut rec = Recorder::in_encoder(&gpu, &cache, &mut encoder);
    let err = loop {
        if let Err(e) = decode::matvec(&mut rec, &w, &x, None, &y, false) {
            break e.to_string();
        }
        assert!(rec.dispatches() < 1 << 20, "no error");
    };
    assert!(err.contains("cannot submit part of it"), "{err}");
    assert!(rec.params_left() < 256);
    drop(rec);
    // A profiler submits work of its own, which a host's encoder cannot wait for.
    cache.set_profiler(Some(ncalm::gpu::Profiler::new(&gpu)));
    let mut rec = Recorder::in_encoder(&gpu, &cache, &mut encoder);
    let err = decode::matvec(&mut rec, &w, &x, None, &y, false).unwrap_err().to_string();
    assert!(err.contains("cannot be profiled"), "{err}");
}
