use std::path::PathBuf;

use anyhow::{ensure, Result};
use clap::Args;

use ncalm::config::Preset;
use ncalm::gpu::profiler::{chrome_trace, summarize};
use ncalm::train::metrics::known_peak_flops;
use ncalm::train::profile::profile;
use ncalm::util::write_atomic;
use ncalm::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// A preset name (tiny, small, paper-1.6b, nca-tiny, nca-small) or a TOML file.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Override a preset setting (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Training steps to time kernel by kernel.
    #[arg(long, default_value_t = 3)]
    steps: u32,
    /// Unprofiled steps first (kernel compilation, then the wall-clock step time; at least 2).
    #[arg(long, default_value_t = 3)]
    warmup: u32,
    /// Write a Chrome/Perfetto trace (JSON) of every timed dispatch.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// The device's peak FLOP/s in TFLOP/s for MFU (known GPUs are looked up).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProfileArgs) -> Result<()> {
    ensure!(args.steps >= 1, "--steps must be at least 1");
    let mut overrides = vec!["data.rules=64".to_string(), "data.val_rules=8".to_string()];
    overrides.extend(args.overrides.iter().cloned());
    let preset = Preset::load(&args.preset, &overrides)?;
    let gpu = Gpu::new(&GpuOptions::default())?;
    eprintln!("profiling {} on {}", args.preset, gpu.describe());
    let r = profile(&gpu, &preset, args.warmup, args.steps, &mut |l| eprintln!("{l}"))?;
    let rows = summarize(&r.timings);
    let kernel_ms: f64 =
        r.timings.iter().map(|t| t.duration_ns).sum::<f64>() / 1e6 / f64::from(r.profiled_steps);
    let tokens_per_s = r.tokens_per_step as f64 / (r.step_ms / 1e3);
    let peak = args.peak_tflops.map(|t| t * 1e12).or_else(|| known_peak_flops(&gpu.adapter_info.name));
    let mfu = peak.map(|p| r.flops_per_token * tokens_per_s / p);
    if let Some(path) = &args.trace {
        write_atomic(path, serde_json::to_string(&chrome_trace(&r.timings))?.as_bytes())?;
    }
    if args.json {
        let v = serde_json::json!({
            "device": gpu.describe(), "timestamps": r.timestamps, "step_ms": r.step_ms, "host_ms_per_step": r.host_ms, "kernel_ms_per_step": kernel_ms,
            "tokens_per_step": r.tokens_per_step, "tokens_per_s": tokens_per_s, "mfu": mfu, "kernels": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "timing: {}",
        if r.timestamps {
            "GPU timestamp queries around each dispatch"
        } else {
            "wall clock per dispatch (no timestamp queries on this device): includes launch and sync overhead"
        }
    );
    let width = rows.iter().map(|k| k.name.len()).max().unwrap_or(0).max(34);
    println!(
        "{:<width$} {:>7} {:>11} {:>10} {:>7} {:>10} {:>9}",
        "kernel", "calls", "total ms", "mean us", "share", "GFLOP/s", "GB/s"
    );
    for k in &rows {
        println!(
            "{:<width$} {:>7} {:>11.3} {:>10.1} {:>6.1}% {:>10.1} {:>9.1}",
            k.name,
            k.calls,
            k.total_ms,
            k.mean_us,
            100.0 * k.share,
            k.gflops,
            k.gbytes_per_s
        );
    }
    println!(
        "per step: {:.2} ms in kernels, {:.2} ms wall without profiling ({:.2} ms of it recording on the host); \
         {} dispatches; {:.0} tokens/s; MFU {}",
        kernel_ms,
        r.step_ms,
        r.host_ms,
        r.timings.len() / r.profiled_steps as usize,
        tokens_per_s,
        mfu.map_or("n/a (unknown peak: --peak-tflops)".into(), |m| format!("{:.1}%", 100.0 * m))
    );
    if let Some(path) = &args.trace {
        println!("wrote {}", path.display());
    }
    Ok(())
}
