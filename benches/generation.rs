//! NCA generation and filter throughput: every GPU kernel variant side by side (tokens left on the
//! device), the one `GpuSimulator::new` picks with read-back, the CPU reference, and the gzip filter. `cargo bench --bench generation`; on a CPU adapter it runs
//! small sizes (lavapipe figures are for smoke-testing only). NCALM_BENCH_SIMS overrides the batch.

use std::time::Instant;

use ncalm::nca::complexity::gzip_ratio;
use ncalm::nca::dataset::{candidate_key, score_candidates, Split};
use ncalm::nca::gpu::{GpuSimulator, Variant};
use ncalm::nca::{CpuSimulator, NcaSpec, Recording, Rule, SimRequest, Simulate, TokenLayout};
use ncalm::rng::derive_key;
use ncalm::{Gpu, GpuOptions};
use rayon::prelude::*;

fn main() -> anyhow::Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    let small = gpu.is_cpu();
    let sims_n: usize = std::env::var("NCALM_BENCH_SIMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if small { 256 } else { 65_536 });
    println!(
        "device: {}{}",
        gpu.describe(),
        if small { " (CPU adapter: small sizes, not for comparison)" } else { "" }
    );
    let spec = NcaSpec::default();
    let layout = TokenLayout::new(&spec, 1024)?;
    let rec = Recording::sequence(&layout);
    let sim = GpuSimulator::new(&gpu, &spec)?;
    let rule_count = sims_n.min(4096);
    let tables: Vec<_> = (0..rule_count as u64)
        .into_par_iter()
        .map(|r| Rule::sample(&spec, derive_key(1, &[r])).table(&spec))
        .collect();
    let sims: Vec<SimRequest> = (0..sims_n)
        .map(|i| SimRequest { rule: (i % rule_count) as u32, key: derive_key(2, &[i as u64]) })
        .collect();
    let tokens_per_batch = (sims_n * rec.tokens_per_sim as usize) as f64;

    // 1. Each kernel variant alone: batches recorded up front, timed from submit to completion.
    let rules = sim.upload_rules(&tables)?;
    let out = sim.token_buffer(sims_n, &rec)?;
    let reps = if small { 2 } else { 10 };
    let mut gpu_rate = 0.0f64;
    // Each variant's tokens of the first simulations beside sim1's: they must be the same bit for bit.
    let check = &sims[..sims_n.min(1024)];
    let sim1 =
        GpuSimulator::with_variant(&gpu, &spec, Variant::OnePerWorkgroup)?.run(&tables, check, &rec)?;
    for variant in Variant::all() {
        let v = match GpuSimulator::with_variant(&gpu, &spec, variant) {
            Ok(v) => v,
            Err(e) => {
                println!("gpu kernel {:<9} skipped: {e:#}", variant.name());
                continue;
            }
        };
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        v.encode(&mut encoder, &rules, tables.len(), &sims, &rec, &out)?;
        gpu.queue.submit([encoder.finish()]);
        gpu.wait()?; // warm-up
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..reps {
            v.encode(&mut encoder, &rules, tables.len(), &sims, &rec, &out)?;
        }
        let commands = encoder.finish();
        let start = Instant::now();
        gpu.queue.submit([commands]);
        gpu.wait()?;
        let secs = start.elapsed().as_secs_f64();
        let rate = tokens_per_batch * reps as f64 / secs;
        let same = v.run(&tables, check, &rec)? == sim1;
        if variant == sim.variant() {
            gpu_rate = rate;
        }
        println!(
            "gpu kernel {:<9}{:>14.0} tokens/s  ({} sims x {} tokens x {reps} batches in {:.3} s; {:.0} sims/s; {}){}",
            variant.name(),
            rate,
            sims_n,
            rec.tokens_per_sim,
            secs,
            sims_n as f64 * reps as f64 / secs,
            if same { "tokens = sim1's" } else { "TOKENS DIFFER FROM sim1's" },
            if variant == sim.variant() { "  <- picked" } else { "" }
        );
    }

    // 2. End to end to host memory, as `generate` uses it (header preparation and read-back included).
    let start = Instant::now();
    let tokens = sim.run(&tables, &sims, &rec)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "gpu with readback {:>14.0} tokens/s  ({} tokens in {:.3} s)",
        tokens.len() as f64 / secs,
        tokens.len(),
        secs
    );

    // 3. The CPU reference on all cores.
    let cpu = CpuSimulator::new(&spec)?;
    let cpu_sims = &sims[..if small { 16 } else { 256 }];
    let start = Instant::now();
    let cpu_tokens = cpu.simulate(&tables, cpu_sims, &rec)?;
    let secs = start.elapsed().as_secs_f64();
    let cpu_rate = cpu_tokens.len() as f64 / secs;
    let threads = rayon::current_num_threads();
    println!(
        "cpu reference     {:>14.0} tokens/s  ({} threads; gpu kernel / cpu = {:.0}x)",
        cpu_rate,
        threads,
        gpu_rate / cpu_rate
    );

    // 4. The complexity filter: sample rules, scoring rollouts on the GPU, gzip on the CPU cores.
    let candidates = if small { 512 } else { 32_768 };
    let keys: Vec<u64> = (0..candidates).map(|i| candidate_key(9, Split::Train, i, 0)).collect();
    let start = Instant::now();
    let ratios = score_candidates(&sim, &spec, &keys)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "filter            {:>14.0} rules/s   ({} candidates in {:.3} s)",
        candidates as f64 / secs,
        ratios.len(),
        secs
    );
    let rollouts: Vec<Vec<u32>> = (0..candidates.min(8192))
        .map(|i| (0..360u32).map(|j| (j * 7 + i as u32 * 13) % 10_000).collect())
        .collect();
    let start = Instant::now();
    let r: Vec<f64> = rollouts.par_iter().map(|t| gzip_ratio(t)).collect();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "  gzip alone      {:>14.0} rules/s   ({} x 1440 bytes at level 9, {threads} threads)",
        r.len() as f64 / secs,
        r.len()
    );
    Ok(())
}
