//! Kernel throughput: matmul at the model's shapes (every variant, and which one the launcher picks:
//! on a GPU this tunes the shape classes not yet in the tuning file),
//! attention forward and backward, and a whole training step of the transformer and NCA presets
//! (tokens/s, MFU against the adapter's FP32 peak or `NCALM_PEAK_TFLOPS`), in f32 and, where the
//! adapter has f16 arithmetic, in half precision (the `128half` matmul, the `coop16` one on cooperative
//! matrices where the adapter runs it, and `train.precision=f16`).
//! `cargo bench --bench kernels`; on a CPU adapter it uses small shapes (for smoke tests only).

use std::time::Instant;

use ncalm::config::Preset;
use ncalm::gpu::{KernelCache, Recorder};
use ncalm::ops::attention::{self, AttentionShape};
use ncalm::ops::matmul::{self, MatmulShape};
use ncalm::ops::testing::{randn, to_f32};
use ncalm::train::metrics::known_peak_flops;
use ncalm::train::profile::profile;
use ncalm::{Gpu, GpuOptions};

/// Runs `record` `reps` times in one submission and returns seconds per repetition.
fn time(gpu: &Gpu, cache: &KernelCache, reps: u32, record: &dyn Fn(&mut Recorder)) -> f64 {
    let mut rec = Recorder::new(gpu, cache);
    record(&mut rec);
    rec.submit();
    gpu.wait().unwrap();
    let start = Instant::now();
    let mut rec = Recorder::new(gpu, cache);
    for _ in 0..reps {
        record(&mut rec);
    }
    rec.submit();
    gpu.wait().unwrap();
    start.elapsed().as_secs_f64() / f64::from(reps)
}

fn main() -> anyhow::Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    let small = gpu.is_cpu();
    let peak = std::env::var("NCALM_PEAK_TFLOPS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(|t| t * 1e12)
        .or_else(|| known_peak_flops(&gpu.adapter_info.name));
    println!(
        "device: {}{}",
        gpu.describe(),
        if small { " (CPU adapter: small shapes, not for comparison)" } else { "" }
    );
    let cache = KernelCache::default();
    let reps = if small { 2 } else { 20 };
    let has_f16 = gpu.features().contains(ncalm::wgpu::Features::SHADER_F16);
    // Every variant this adapter runs, half precision included where it has f16 arithmetic (and the
    // cooperative-matrix kernel where it lists its shape).
    let variants = matmul::VARIANTS.supported(&gpu);
    // (tokens, in, out): the small preset's projections and MLP, and the paper-1.6b width.
    let shapes: &[(u32, u32, u32, &str)] = if small {
        &[(256, 64, 256, "tiny mlp")]
    } else {
        &[
            (8192, 256, 1024, "small mlp up"),
            (8192, 1024, 256, "small mlp down"),
            (8192, 256, 10048, "small head"),
            (8192, 2048, 2048, "1.6b attn proj"),
            (8192, 2048, 8192, "1.6b mlp up"),
            (8192, 8192, 2048, "1.6b mlp down"),
        ]
    };
    println!("cooperative matmul: {}", matmul::cooperative_report(&gpu));
    println!(
        "{:<24} {:>22} {:>11} {:>9} {:>9} {:>9}",
        "matmul", "shape (m x k x n)", "variant", "ms", "TFLOP/s", "of peak"
    );
    for &(m, k, n, label) in shapes {
        for (name, trans_a, trans_b, (mm, kk, nn)) in [
            ("Y=XW^T", false, true, (m, k, n)),
            ("dX=dYW", false, false, (m, n, k)),
            ("dW=dY^TX", true, false, (n, m, k)),
        ] {
            let a = gpu.upload(&to_f32(&randn((mm * kk) as usize, 1)), "a")?;
            let b = gpu.upload(&to_f32(&randn((kk * nn) as usize, 2)), "b")?;
            let c = gpu.tensor((mm * nn) as usize, "c")?;
            let shape = MatmulShape { m: mm, n: nn, k: kk, trans_a, trans_b, accumulate: false };
            let picked = matmul::pick(&gpu, &shape)?;
            // The variant of train.precision=f16, where it differs (on a GPU, tuned among the
            // half-precision kernels this adapter runs, each checked against the f32 one first).
            let half =
                if has_f16 { Some(matmul::pick_in(&gpu, &shape, matmul::Precision::F16)?) } else { None };
            for &variant in &variants {
                let s = time(&gpu, &cache, reps, &|rec| {
                    matmul::matmul_with(rec, &a, &b, &c, &shape, None, variant).unwrap()
                });
                let tflops = 2.0 * f64::from(mm) * f64::from(nn) * f64::from(kk) / s / 1e12;
                let share = peak.map_or("n/a".into(), |p| format!("{:.1}%", 100.0 * tflops * 1e12 / p));
                println!(
                    "{:<24} {:>22} {:>11} {:>9.3} {:>9.2} {:>9}{}",
                    format!("{label} {name}"),
                    format!("{mm} x {kk} x {nn}"),
                    variant.name().trim_start_matches("tile"),
                    s * 1e3,
                    tflops,
                    share,
                    match (variant == picked, half.filter(|&h| h != picked) == Some(variant)) {
                        (true, _) => "  (picked)",
                        (_, true) => "  (picked in f16)",
                        _ => "",
                    }
                );
            }
        }
    }
    let shape = if small {
        AttentionShape { batch: 1, seq_len: 64, heads: 2, head_dim: 16 }
    } else {
        AttentionShape { batch: 8, seq_len: 1024, heads: 4, head_dim: 64 }
    };
    let n = shape.activation_len();
    let (qkv, d_o) =
        (gpu.upload(&to_f32(&randn(shape.qkv_len(), 3)), "qkv")?, gpu.upload(&to_f32(&randn(n, 6)), "do")?);
    let (o, dqkv) = (gpu.tensor(n, "o")?, gpu.tensor(shape.qkv_len(), "dqkv")?);
    let (lse, delta) = (gpu.tensor(shape.row_stat_len(), "lse")?, gpu.tensor(shape.row_stat_len(), "delta")?);
    // Every forward and backward variant this adapter runs (flash32k needs 32 KiB of workgroup memory,
    // coop16 cooperative matrices); the summary lines give the picked f32 ones, and coop16's.
    let supported = attention::BLOCKINGS.supported(&gpu);
    let time_variants = |pass, name: &str, run: &dyn Fn(&mut Recorder, attention::Blocking)| {
        let picked = attention::Blocking::pick(&gpu, pass, &shape)?;
        let (mut picked_time, mut coop_time) = (0.0, None);
        for &variant in &supported {
            let s = time(&gpu, &cache, reps, &|rec| run(rec, variant));
            if variant == picked {
                picked_time = s;
            }
            if variant == attention::Blocking::Coop16 {
                coop_time = Some(s);
            }
            println!(
                "attention {name} {:<18} {:.3} ms{}",
                variant.name(),
                s * 1e3,
                if variant == picked { "  (picked)" } else { "" }
            );
        }
        anyhow::Ok((picked_time, coop_time))
    };
    let (fwd, coop_fwd) = time_variants(attention::AttentionPass::Forward, "forward", &|rec, variant| {
        attention::forward_with(rec, &qkv, &o, &lse, &shape, None, variant).unwrap()
    })?;
    let grads =
        attention::BackwardTensors { qkv: &qkv, o: &o, lse: &lse, d_o: &d_o, dqkv: &dqkv, delta: &delta };
    let (bwd, coop_bwd) = time_variants(attention::AttentionPass::Backward, "backward", &|rec, variant| {
        attention::backward_with(rec, &grads, &shape, None, variant).unwrap()
    })?;
    let pairs =
        f64::from(shape.batch * shape.heads) * f64::from(shape.seq_len) * f64::from(shape.seq_len + 1) / 2.0;
    let flops = 4.0 * pairs * f64::from(shape.head_dim);
    // Forward and backward together against the FP32 peak: the figure the attention target is set in.
    let both = 3.5 * flops / (fwd + bwd);
    let share = peak.map_or("n/a".into(), |p| format!("{:.1}% of peak", 100.0 * both / p));
    println!(
        "attention {}x{}x{}x{}: forward {:.3} ms ({:.2} TFLOP/s), backward {:.3} ms ({:.2} TFLOP/s at 2.5x the forward's work), together {:.2} TFLOP/s ({share})",
        shape.batch, shape.seq_len, shape.heads, shape.head_dim, fwd * 1e3, flops / fwd / 1e12, bwd * 1e3, 2.5 * flops / bwd / 1e12, both / 1e12
    );
    match (coop_fwd, coop_bwd) {
        (Some(f), Some(b)) => println!(
            "attention coop16 (f16 operands, tensor cores): forward {:.3} ms, backward {:.3} ms, together {:.2} TFLOP/s, {:.2}x the f32 pick",
            f * 1e3,
            b * 1e3,
            3.5 * flops / (f + b) / 1e12,
            (fwd + bwd) / (f + b)
        ),
        _ => println!("attention coop16: {}", attention::cooperative_report(&gpu)),
    }
    let precisions: &[&str] = if has_f16 { &["f32", "f16"] } else { &["f32"] };
    let presets = if small { ["tiny", "nca-tiny"] } else { ["small", "nca-small"] };
    for (name, precision) in presets.iter().flat_map(|n| precisions.iter().map(move |p| (*n, *p))) {
        let sets =
            ["data.rules=64".into(), "data.val_rules=8".into(), format!("train.precision={precision}")];
        let preset = Preset::load(name, &sets)?;
        let r = profile(&gpu, &preset, 4, 1, &mut |_| {})?;
        let tokens_per_s = r.tokens_per_step as f64 / (r.step_ms / 1e3);
        let mfu =
            peak.map_or("n/a".into(), |p| format!("{:.1}%", 100.0 * r.flops_per_token * tokens_per_s / p));
        println!(
            "training step, preset {name}, {precision}: {:.1} ms, {:.0} tokens/s, MFU {mfu}",
            r.step_ms, tokens_per_s
        );
    }
    Ok(())
}
