//! The `ncalm` command line: one module per subcommand, each a thin layer over the library.

mod eval;
mod experiment;
mod fit_rule;
mod generate;
mod info;
mod profile;
mod render;
mod sample;
mod stats;
mod tokenize;
mod train;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use ncalm::config::DataConfig;
use ncalm::nca::complexity::Band;
use ncalm::nca::dataset::SearchSettings;
use ncalm::nca::NcaSpec;
use ncalm::{Gpu, GpuOptions};

#[derive(Parser, Debug)]
#[command(name = "ncalm", version, about = "Train language models on neural cellular automata, on any GPU")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the GPU adapter, backend, driver, and the limits and features ncalm uses.
    Info(info::InfoArgs),
    /// Generate NCA token data (train.bin, val.bin, manifest.json).
    Generate(generate::GenerateArgs),
    /// Draw one rule's trajectory as a PNG (frames side by side) or an animated GIF.
    Render(render::RenderArgs),
    /// Print statistics of a generated data set and draw them (stats.png).
    Stats(stats::StatsArgs),
    /// Recover a hidden NCA rule from its trajectories by gradient descent through the 3x3 torus convolution.
    FitRule(fit_rule::FitRuleArgs),
    /// Tokenize text into uint16 token files (nanoGPT layout).
    Tokenize(tokenize::TokenizeArgs),
    /// Train a model: stage 1 on NCA (or a baseline), or stage 2 on text from a stage-1 checkpoint.
    Train(train::TrainArgs),
    /// Loss and perplexity of a checkpoint on a data set's val.bin or a uint16 token file.
    Eval(eval::EvalArgs),
    /// Generate text from a checkpoint (temperature, top-p, a key-value cache).
    Sample(sample::SampleArgs),
    /// Time every kernel of real training steps: a table per kernel, and a Chrome/Perfetto trace.
    Profile(profile::ProfileArgs),
    /// The paper's comparison in one command: each arm's stage 1, stage 2 on text, and a report.
    Experiment(experiment::ExperimentArgs),
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => info::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Render(a) => render::run(a),
        Command::Stats(a) => stats::run(a),
        Command::FitRule(a) => fit_rule::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Profile(a) => profile::run(a),
    }
}

/// The NCA rule family and complexity band, shared by `generate`, `render` and `fit-rule`. Each flag
/// given overrides one setting of the default data section ([`DataConfig`], the paper's values), which
/// its help shows.
#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    #[arg(long, help = with_default("Alphabet size n (2..=15)", |d| d.spec.states))]
    pub states: Option<u32>,
    #[arg(long, help = with_default("Grid side (even)", |d| d.spec.grid))]
    pub grid: Option<u32>,
    #[arg(
        long,
        value_parser = Band::parse,
        help = with_default("Keep rules whose gzip ratio lies strictly inside LO:HI", |d| String::from(d.band))
    )]
    pub band: Option<Band>,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, help = with_default("Output channels of the 3x3 convolution", |d| d.spec.conv_channels))]
    pub conv_channels: Option<u32>,
    #[arg(long, help = with_default("Hidden width of the per-cell MLP", |d| d.spec.hidden))]
    pub hidden: Option<u32>,
    #[arg(long, help = with_default("Gumbel-max sampling temperature", |d| d.spec.temperature))]
    pub temperature: Option<f32>,
    #[arg(long, help = with_default("Logit bonus for a cell keeping its state", |d| d.spec.identity_bias))]
    pub identity_bias: Option<f32>,
    #[arg(long, help = with_default("Steps discarded before the first recorded frame", |d| d.spec.burn_in))]
    pub burn_in: Option<u32>,
    /// Do not wrap-pad the channel axis (the reference does).
    #[arg(long)]
    pub no_channel_wrap: bool,
    #[arg(
        long,
        help = format!(
            "Stop with an error when fewer candidate rules than this share pass the band [default: {}]",
            SearchSettings::default().min_acceptance
        )
    )]
    pub min_acceptance: Option<f64>,
    /// Simulate with the CPU reference instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
}

/// A flag's help ending in the default data section's value of its setting, as clap writes defaults.
fn with_default<T: std::fmt::Display>(help: &str, setting: impl Fn(&DataConfig) -> T) -> String {
    format!("{help} [default: {}]", setting(&DataConfig::default()))
}

impl RuleArgs {
    /// The default data section with the flags given applied (unchecked).
    pub fn data(&self) -> DataConfig {
        let mut data = DataConfig::default();
        let spec = &mut data.spec;
        spec.states = self.states.unwrap_or(spec.states);
        spec.grid = self.grid.unwrap_or(spec.grid);
        spec.conv_channels = self.conv_channels.unwrap_or(spec.conv_channels);
        spec.hidden = self.hidden.unwrap_or(spec.hidden);
        spec.temperature = self.temperature.unwrap_or(spec.temperature);
        spec.identity_bias = self.identity_bias.unwrap_or(spec.identity_bias);
        spec.burn_in = self.burn_in.unwrap_or(spec.burn_in);
        spec.channel_wrap &= !self.no_channel_wrap;
        data.band = self.band.unwrap_or(data.band);
        data
    }

    /// The rule family these flags ask for, checked.
    pub fn spec(&self) -> Result<NcaSpec> {
        let spec = self.data().spec;
        spec.validate()?;
        Ok(spec)
    }

    /// The rule search: the band and the lowest acceptance rate tolerated.
    pub fn search(&self) -> SearchSettings {
        let defaults = SearchSettings::default();
        SearchSettings {
            band: self.data().band,
            min_acceptance: self.min_acceptance.unwrap_or(defaults.min_acceptance),
            ..defaults
        }
    }

    /// The simulator these arguments ask for.
    pub fn simulator(&self, spec: &NcaSpec) -> Result<Box<dyn ncalm::nca::Simulate>> {
        if self.cpu {
            return Ok(Box::new(ncalm::nca::CpuSimulator::new(spec)?));
        }
        let gpu = Gpu::new(&GpuOptions::default())?;
        Ok(Box::new(ncalm::nca::gpu::GpuSimulator::new(&gpu, spec)?))
    }
}

/// A progress bar on standard error that stays quiet when it is not a terminal.
/// A flag Ctrl-C or SIGTERM raises, asking training to stop after the current step with a checkpoint;
/// a second interrupt exits at once.
pub fn stop_on_interrupt() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now; the last checkpoint is intact");
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving a checkpoint (interrupt again to stop at once)");
    })
    .context("installing the interrupt handler")?;
    Ok(stop)
}

pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>22} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        rule: RuleArgs,
    }

    fn parse(flags: &[&str]) -> Result<RuleArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("ncalm").chain(flags.iter().copied())).map(|f| f.rule)
    }

    #[test]
    fn rule_flags_override_the_data_section() {
        let none = parse(&[]).unwrap();
        assert_eq!(none.data(), DataConfig::default());
        assert_eq!(none.search().min_acceptance, SearchSettings::default().min_acceptance);
        let given = parse(&[
            "--states",
            "4",
            "--grid",
            "8",
            "--band",
            "0.3:0.6",
            "--conv-channels",
            "2",
            "--hidden",
            "32",
            "--temperature",
            "0.5",
            "--identity-bias",
            "1",
            "--burn-in",
            "3",
            "--no-channel-wrap",
            "--min-acceptance",
            "0.01",
        ])
        .unwrap();
        let spec = NcaSpec {
            grid: 8,
            states: 4,
            channel_wrap: false,
            conv_channels: 2,
            hidden: 32,
            temperature: 0.5,
            identity_bias: 1.0,
            burn_in: 3,
        };
        assert_eq!(given.spec().unwrap(), spec);
        assert_eq!(given.search().band, Band::new(0.3, 0.6).unwrap());
        assert_eq!(given.search().min_acceptance, 0.01);
        let err = parse(&["--band", "0.6:0.5"]).unwrap_err().to_string();
        assert!(err.contains("complexity band"), "{err}");
    }

    #[test]
    fn help_shows_the_data_sections_defaults() {
        let help = Flags::command().render_help().to_string();
        for line in [
            "Alphabet size n (2..=15) [default: 10]",
            "Keep rules whose gzip ratio lies strictly inside LO:HI [default: 0.5:1.0]",
            "Hidden width of the per-cell MLP [default: 16]",
            "Gumbel-max sampling temperature [default: 0.0001]",
            "[default: 0.002]",
        ] {
            assert!(help.contains(line), "{line:?} missing from:\n{help}");
        }
    }
}
