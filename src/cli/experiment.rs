use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use ncalm::config::Preset;
use ncalm::data::tokenizer::Tokenizer;
use ncalm::experiment::compare::compare;
use ncalm::experiment::{run_experiment, Arm, ExperimentConfig};
use ncalm::model::config::Arch;
use ncalm::{Gpu, GpuOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ArchArg {
    /// The Llama-style transformer (preset small, or tiny on a CPU device).
    Transformer,
    /// The NCA language model of docs/nca-lm.md (preset nca-small, or nca-tiny on a CPU device).
    Nca,
    /// Both, one after the other, then a comparison at equal training FLOPs (architectures.md/png).
    Both,
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// The model's architecture.
    #[arg(long, value_enum, default_value = "transformer")]
    arch: ArchArg,
    /// Where runs, report.md, report.json and curves.png go.
    #[arg(long, default_value = "runs/experiment")]
    out: PathBuf,
    /// Stage-2 corpus: `ncalm tokenize` output or nanoGPT train.bin/val.bin (default: the Rust sources
    /// of ncalm's locked dependencies in the local cargo registry).
    #[arg(long)]
    text: Option<PathBuf>,
    /// A second corpus for the natural-text pre-pre-training arm (`--arms ...,text`).
    #[arg(long)]
    pre_text: Option<PathBuf>,
    /// Tokenizer for the default corpus (default: gpt2 on a GPU, bytes on a CPU device).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Preset (default: small or nca-small on a GPU, tiny or nca-tiny on a CPU device).
    #[arg(long)]
    preset: Option<String>,
    /// Override a preset setting (repeatable), e.g. --set model.layers=2.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    /// Stage-1 tokens per arm (default: 20M on a GPU, 38,400 on a CPU device).
    #[arg(long)]
    nca_tokens: Option<u64>,
    /// Stage-2 tokens per arm (default: 20M on a GPU, 64,000 on a CPU device).
    #[arg(long)]
    text_tokens: Option<u64>,
    /// Arms to compare (scratch is required): scratch, nca, dyck, text.
    #[arg(long, value_delimiter = ',', default_value = "scratch,nca,dyck")]
    arms: Vec<String>,
    /// Complexity band of the NCA rules.
    #[arg(long)]
    band: Option<String>,
    /// Paired seeds (default: 1,2,3 on a GPU, 1,2 on a CPU device).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Standard deviation of the stage-2 embedding (the reference: 1.0).
    #[arg(long, default_value_t = 1.0)]
    embed_init: f32,
}

pub fn run(args: ExperimentArgs) -> Result<()> {
    let gpu = Gpu::new(&GpuOptions::default())?;
    let arches = match args.arch {
        ArchArg::Transformer => vec![Arch::Transformer],
        ArchArg::Nca => vec![Arch::Nca],
        ArchArg::Both => {
            if args.preset.is_some() {
                bail!("--arch both uses each architecture's default preset: give --preset with one --arch");
            }
            vec![Arch::Transformer, Arch::Nca]
        }
    };
    let nested = arches.len() > 1;
    // Every configuration is checked before the first run starts.
    let plans = arches
        .into_iter()
        .map(|arch| {
            let out = if nested { args.out.join(arch.name()) } else { args.out.clone() };
            Ok((arch, plan(&gpu, &args, arch, out)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut experiments = Vec::new();
    for (arch, cfg) in plans {
        eprintln!(
            "experiment ({}) on {}: arms {:?}, seeds {:?}",
            arch.name(),
            gpu.describe(),
            cfg.arms,
            cfg.seeds
        );
        let (report, results) = run_experiment(&gpu, &cfg, &mut |line| eprintln!("{line}"))?;
        println!("{}", report.table());
        println!("wrote {}/report.md, report.json and curves.png", cfg.out.display());
        experiments.push((arch.name().to_string(), results));
    }
    if experiments.len() > 1 {
        let md = compare(&args.out, &experiments)?;
        println!("{md}");
        println!("wrote {}/architectures.md and architectures.png", args.out.display());
    }
    Ok(())
}

/// The experiment's configuration for one architecture, validated.
fn plan(gpu: &Gpu, args: &ExperimentArgs, arch: Arch, out: PathBuf) -> Result<ExperimentConfig> {
    let cpu = gpu.is_cpu();
    let default_preset = match (arch, cpu) {
        (Arch::Transformer, true) => "tiny",
        (Arch::Transformer, false) => "small",
        (Arch::Nca, true) => "nca-tiny",
        (Arch::Nca, false) => "nca-small",
    };
    let preset_name = args.preset.clone().unwrap_or_else(|| default_preset.into());
    let mut overrides = args.overrides.clone();
    if let Some(b) = &args.band {
        overrides.push(format!("data.band=\"{b}\""));
    }
    let preset = Preset::load(&preset_name, &overrides)?;
    if preset.model.arch != arch {
        bail!(
            "preset {preset_name} is a {} model but --arch is {}: pick a preset of that architecture \
             (e.g. {default_preset}) or set model.arch",
            preset.model.arch.name(),
            arch.name()
        );
    }
    let tokenizer =
        Tokenizer::parse(args.tokenizer.as_deref().unwrap_or(if cpu { "bytes" } else { "gpt2" }))?;
    if !(args.embed_init.is_finite() && args.embed_init > 0.0) {
        bail!("--embed-init must be a positive number, got {}", args.embed_init);
    }
    let arms = args.arms.iter().map(|a| Arm::parse(a)).collect::<Result<Vec<_>>>()?;
    let cfg = ExperimentConfig {
        preset_name,
        preset,
        text: args.text.clone(),
        pre_text: args.pre_text.clone(),
        tokenizer,
        arms,
        seeds: if args.seeds.is_empty() {
            if cpu {
                vec![1, 2]
            } else {
                vec![1, 2, 3]
            }
        } else {
            args.seeds.clone()
        },
        pre_tokens: args.nca_tokens.unwrap_or(if cpu { 38_400 } else { 20_000_000 }),
        text_tokens: args.text_tokens.unwrap_or(if cpu { 64_000 } else { 20_000_000 }),
        embed_std: args.embed_init,
        out,
        demonstration: cpu,
    };
    cfg.validate()?;
    Ok(cfg)
}
