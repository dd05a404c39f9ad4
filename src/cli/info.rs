use anyhow::Result;
use clap::Args;

use ncalm::config::Preset;
use ncalm::gpu::tune;
use ncalm::model::config::{nca_vocab, Arch};
use ncalm::model::ModelConfig;
use ncalm::train::memory::{DeviceLimits, MemoryPlan};
use ncalm::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also summarise this preset's model (a name or a TOML file): parameters, FLOPs per token, the
    /// receptive field, with the NCA stage's vocabulary, and the memory plan of its stage-1 training
    /// on this device.
    #[arg(long)]
    preset: Option<String>,
    /// Override a preset setting (repeatable), e.g. --set model.steps=24.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
}

/// The model's summary: its description, FLOPs per token at its context and its receptive field.
fn model_summary(name: &str, cfg: &ModelConfig) -> (String, serde_json::Value) {
    let flops = cfg.flops_per_token(cfg.context);
    let growth = match cfg.arch {
        Arch::Transformer => "attention's cost per token grows with the context (12 L T d FLOPs)",
        Arch::Nca => "attention-free: the cost per token is the same at any context",
    };
    // What data-parallel ranks sum per optimiser step: one f32 gradient per parameter.
    let gradient_mib = cfg.parameters() as f64 * 4.0 / f64::from(1 << 20);
    let text = format!(
        "model (preset {name}, vocabulary {}):\n  {}\n  training FLOPs per token at context {}: {flops:.3e}\n  \
         receptive field: {} tokens; {growth}\n  data parallel: {gradient_mib:.1} MiB of gradients summed per \
         optimiser step\n",
        cfg.vocab_size,
        cfg.describe(),
        cfg.context,
        cfg.receptive_field()
    );
    let json = serde_json::json!({
        "preset": name,
        "config": cfg,
        "parameters": cfg.parameters(),
        "flops_per_token": flops,
        "receptive_field": cfg.receptive_field(),
        "gradient_bytes_per_step": cfg.parameters() * 4,
    });
    (text, json)
}

pub fn run(args: InfoArgs) -> Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    let model = match &args.preset {
        Some(name) => {
            let preset = Preset::load(name, &args.overrides)?;
            let cfg = ModelConfig { vocab_size: nca_vocab(preset.data.spec.states), ..preset.model };
            cfg.validate()?;
            let (mut text, mut json) = model_summary(name, &cfg);
            let plan = MemoryPlan::new(&cfg, &preset.train, cfg.context, DeviceLimits::of(&gpu));
            text.push_str(&plan.report());
            if let Err(e) = plan.check(&cfg, &preset.train, "train") {
                let advice = e.to_string();
                let first = advice.lines().next().unwrap_or_default();
                let reason = first.trim_start_matches("the run does not fit this device: ");
                text.push_str(&format!("  does not fit: {reason}\n"));
            }
            json["memory"] = plan.report_json();
            Some((text, json))
        }
        None => None,
    };
    let tuner = tune::Tuner::open(tune::cache_path());
    let tuning = match (tune::enabled(&gpu), tuner.path()) {
        (false, _) => "off on this adapter (NCALM_AUTOTUNE=1 turns it on)".to_string(),
        (true, Some(path)) => format!("{} shape classes tuned, in {}", tuner.tuned(&gpu), path.display()),
        (true, None) => "in memory only (no cache directory)".to_string(),
    };
    let mpi = if cfg!(feature = "mpi") {
        "built in: mpirun -np N ncalm train ... (docs/distributed.md)"
    } else {
        "not built (cargo build --release --features mpi)"
    };
    if args.json {
        let mut report = gpu.report_json();
        report["kernel_tuning"] = serde_json::Value::String(tuning);
        report["mpi"] = serde_json::Value::Bool(cfg!(feature = "mpi"));
        if let Some((_, json)) = model {
            report["model"] = json;
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        // The tuning line joins the table of limits and features, above any closing note.
        let report = gpu.report();
        let at = report.find("\nnote:").map_or(report.len(), |i| i + 1);
        print!(
            "{}{:<27}{tuning}\n{:<27}{mpi}\n{}",
            &report[..at],
            "kernel tuning",
            "data parallel (MPI)",
            &report[at..]
        );
        if let Some((text, _)) = model {
            print!("{text}");
        }
    }
    Ok(())
}
