use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};

use ncalm::config::Preset;
use ncalm::data::tokenizer::Tokenizer;
use ncalm::distributed::ProcessGroup;
use ncalm::experiment::compare::compare;
use ncalm::experiment::timing::parse_duration;
use ncalm::experiment::units::Task;
use ncalm::experiment::{report_dir, run_experiment, Arm, ExperimentConfig, Outcome};
use ncalm::model::config::Arch;
use ncalm::nca::complexity::Band;
use ncalm::{Gpu, GpuOptions};

/// The time budget of the CPU default: a first run that finishes in about five minutes.
const CPU_TIME_BUDGET: &str = "5m";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ArchArg {
    /// The Llama-style transformer (preset small, or tiny on a CPU device).
    Transformer,
    /// The NCA language model of docs/nca-lm.md (preset nca-small, or nca-tiny on a CPU device).
    Nca,
    /// Both, one after the other, then a comparison at equal training FLOPs (architectures.md/png).
    Both,
}

#[derive(Subcommand, Debug)]
enum ExperimentCommand {
    /// Build report.md, report.json and curves.png from the finished units of the experiment in DIR
    /// (e.g. after the tasks of a job array), naming the units still missing.
    Report {
        /// The experiment's --out directory.
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExperimentArgs {
    #[command(subcommand)]
    command: Option<ExperimentCommand>,
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
    /// Stage-1 tokens per arm (default: 20M on a GPU; on a CPU device, set by the time budget).
    #[arg(long)]
    nca_tokens: Option<u64>,
    /// Stage-2 tokens per arm (default: 20M on a GPU; on a CPU device, set by the time budget).
    #[arg(long)]
    text_tokens: Option<u64>,
    /// Pick the token budgets from throughput measured on a few timed steps, so that the whole run
    /// takes about this long here (e.g. 90s, 5m, 1h30m), keeping the ratio of --nca-tokens to
    /// --text-tokens. Default on a CPU device without token budgets: 5m.
    #[arg(long, value_name = "DURATION")]
    time_budget: Option<String>,
    /// Run only the I-th of N contiguous parts of the units (0 <= I < N), e.g. a job array's task; a
    /// unit is one arm and seed, its stage 1 and stage 2.
    #[arg(long, value_name = "I/N")]
    task: Option<String>,
    /// Time a few steps, print the predicted wall time of the run and of one unit, and stop.
    #[arg(long)]
    estimate: bool,
    /// Arms to compare (scratch is required): scratch, nca, dyck, text.
    #[arg(long, value_delimiter = ',', default_value = "scratch,nca,dyck")]
    arms: Vec<String>,
    /// Complexity band of the NCA rules.
    #[arg(long, conflicts_with = "bands")]
    band: Option<String>,
    /// A band sweep: one NCA arm per gzip band, e.g. 0.3:0.5,0.5:1.0 (the same scratch baseline and
    /// seeds); the report ranks the bands.
    #[arg(long, value_delimiter = ',', value_name = "LO:HI,...")]
    bands: Vec<String>,
    /// Paired seeds (default: 1,2,3 on a GPU, 1,2 on a CPU device).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Standard deviation of the stage-2 embedding (the reference: 1.0).
    #[arg(long, default_value_t = 1.0)]
    embed_init: f32,
}

/// `ncalm experiment`, alone or as one rank of an MPI job: every run trains with all ranks.
pub fn run(args: ExperimentArgs) -> Result<()> {
    let group = ProcessGroup::launched()?;
    let result = run_in(&group, args);
    let interrupted = group.finish(result)?;
    drop(group);
    if interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// Runs the experiment; whether a stop signal cut it short.
fn run_in(group: &ProcessGroup, args: ExperimentArgs) -> Result<bool> {
    if let Some(ExperimentCommand::Report { dir }) = &args.command {
        if !group.is_root() {
            return Ok(false);
        }
        let (report, _) = report_dir(dir)?;
        println!("{}", report.table());
        if !report.missing.is_empty() {
            println!("missing units ({}): {}", report.missing.len(), report.missing.join(", "));
        }
        println!("wrote {}/report.md, report.json and curves.png", dir.display());
        return Ok(false);
    }
    let gpu =
        group.settle(Gpu::new(&GpuOptions { local_rank: Some(group.local_rank()), ..Default::default() }))?;
    let root = group.is_root();
    let arches = match args.arch {
        ArchArg::Transformer => vec![Arch::Transformer],
        ArchArg::Nca => vec![Arch::Nca],
        ArchArg::Both => {
            if args.preset.is_some() {
                bail!("--arch both uses each architecture's default preset: give --preset with one --arch");
            }
            if args.task.is_some() || !args.bands.is_empty() {
                bail!("--task and --bands work on one architecture: give --arch transformer or --arch nca");
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
            Ok((arch, plan(&gpu, &args, arch, out, group)?))
        })
        .collect::<Result<Vec<_>>>();
    let plans = group.settle(plans)?;
    let stop = super::stop_on_interrupt()?;
    let mut experiments = Vec::new();
    for (arch, cfg) in plans {
        if !root {
            match run_experiment(&gpu, &cfg, Some(stop.clone()), &mut |_| {})? {
                Outcome::Interrupted { .. } => return Ok(true),
                Outcome::Finished { .. } | Outcome::Estimated => continue,
            }
        }
        eprintln!(
            "experiment ({}) on {}: arms {:?}, seeds {:?}{}",
            arch.name(),
            gpu.describe(),
            cfg.arms,
            cfg.seeds,
            cfg.task.map_or(String::new(), |t| format!(", task {}/{}", t.index, t.count))
        );
        match run_experiment(&gpu, &cfg, Some(stop.clone()), &mut |line| eprintln!("{line}"))? {
            Outcome::Finished { report, results } => {
                println!("{}", report.table());
                if !report.missing.is_empty() {
                    println!("missing units ({}): {}", report.missing.len(), report.missing.join(", "));
                }
                println!("wrote {}/report.md, report.json and curves.png", cfg.out.display());
                experiments.push((arch.name().to_string(), results));
            }
            Outcome::Interrupted { unit } => {
                println!("interrupted during {unit}; run the same command again to resume it");
                return Ok(true);
            }
            Outcome::Estimated => {}
        }
    }
    if root && experiments.len() > 1 {
        let md = compare(&args.out, &experiments)?;
        println!("{md}");
        println!("wrote {}/architectures.md and architectures.png", args.out.display());
    }
    Ok(false)
}

/// The experiment's configuration for one architecture, validated.
fn plan(
    gpu: &Gpu,
    args: &ExperimentArgs,
    arch: Arch,
    out: PathBuf,
    group: &ProcessGroup,
) -> Result<ExperimentConfig> {
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
    let bands = args.bands.iter().map(|b| Band::parse(b)).collect::<Result<Vec<_>>>()?;
    let budget_given = args.nca_tokens.is_some() || args.text_tokens.is_some();
    let time_budget = match &args.time_budget {
        Some(d) => Some(parse_duration(d).context("--time-budget")?),
        None if cpu && !budget_given => Some(parse_duration(CPU_TIME_BUDGET)?),
        None => None,
    };
    let cfg = ExperimentConfig {
        preset_name,
        preset,
        text: args.text.clone(),
        pre_text: args.pre_text.clone(),
        tokenizer,
        arms,
        bands,
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
        time_budget_s: time_budget,
        task: args.task.as_deref().map(Task::parse).transpose()?,
        estimate_only: args.estimate,
        embed_std: args.embed_init,
        out,
        demonstration: cpu,
        group: group.clone(),
    };
    cfg.validate()?;
    Ok(cfg)
}
