//! Decoding throughput: tokens/s of the GPU generator (every step in one submission, and with a readback
//! every 16 tokens as `ncalm sample` does) against the host `Generator`, for the transformer and the NCA
//! presets, from one run. `cargo bench --bench decode`; on a CPU adapter it uses the tiny presets (for
//! smoke tests only).

use std::time::Instant;

use ncalm::config::Preset;
use ncalm::model::infer::{Generator, GpuGenerator, Sampling};
use ncalm::model::HostParams;
use ncalm::{Gpu, GpuOptions};

fn main() -> anyhow::Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    let small = gpu.is_cpu();
    println!(
        "device: {}{}",
        gpu.describe(),
        if small { " (CPU adapter: tiny presets, not for comparison)" } else { "" }
    );
    let presets = if small { ["tiny", "nca-tiny"] } else { ["small", "nca-small"] };
    let sampling = Sampling { temperature: 0.8, top_p: 0.95, seed: 1 };
    for name in presets {
        let mut cfg = Preset::load(name, &[])?.model;
        // Text vocabularies: GPT-2's on a GPU, bytes on a CPU adapter.
        cfg.vocab_size = if small { 257 } else { 50_257 };
        let params = HostParams::init(&cfg, 1);
        let steps = cfg.context.min(if small { 48 } else { 512 }) - 1;
        let mut generator = GpuGenerator::new(&gpu, &cfg, &params, sampling)?;
        // Compiles the kernels.
        generator.set_prompt(&[0])?;
        generator.generate(2)?;
        generator.read_tokens()?;
        generator.set_prompt(&[0])?;
        let start = Instant::now();
        generator.generate(steps)?;
        generator.read_tokens()?;
        let one_submission = f64::from(steps) / start.elapsed().as_secs_f64();
        generator.set_prompt(&[0])?;
        let start = Instant::now();
        while generator.position() < steps {
            generator.generate(16.min(steps - generator.position()))?;
            generator.read_tokens()?;
        }
        let chunked = f64::from(steps) / start.elapsed().as_secs_f64();
        // The host's share: recording alone (the encoder is dropped, never submitted).
        generator.set_prompt(&[0])?;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let start = Instant::now();
        generator.record(&mut encoder, steps)?;
        let record_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(steps);
        drop(encoder);
        let mut host = Generator::new(&cfg, params);
        let host_steps = steps.min(if small { 48 } else { 64 });
        let start = Instant::now();
        for t in 0..host_steps {
            host.step(t % cfg.vocab_size)?;
        }
        let host_rate = f64::from(host_steps) / start.elapsed().as_secs_f64();
        println!(
            "decode, preset {name} (vocab {}, {steps} tokens): GPU {one_submission:.0} tokens/s in one \
             submission, {chunked:.0} tokens/s reading back every 16 (recording {record_us:.0} us a token); host \
             Generator {host_rate:.0} tokens/s",
            cfg.vocab_size
        );
    }
    Ok(())
}
