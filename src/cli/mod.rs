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

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::nca::complexity::Band;
use crate::nca::NcaSpec;
use crate::{Gpu, GpuOptions};

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

/// The rule family and filter band, shared by `generate` and `render`.
#[derive(Args, Debug, Clone)]
pub struct RuleArgs {
    /// Alphabet size n (2..=15).
    #[arg(long, default_value_t = 10)]
    pub states: u32,
    /// Grid side (even).
    #[arg(long, default_value_t = 12)]
    pub grid: u32,
    /// Keep rules whose gzip ratio lies strictly inside LO:HI.
    #[arg(long, default_value = "0.5:1.0")]
    pub band: String,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output channels of the 3x3 convolution.
    #[arg(long, default_value_t = 4)]
    pub conv_channels: u32,
    /// Hidden width of the per-cell MLP.
    #[arg(long, default_value_t = 16)]
    pub hidden: u32,
    /// Gumbel-max sampling temperature.
    #[arg(long, default_value_t = 1e-4)]
    pub temperature: f32,
    /// Logit bonus for a cell keeping its state.
    #[arg(long, default_value_t = 0.0)]
    pub identity_bias: f32,
    /// Steps discarded before the first recorded frame.
    #[arg(long, default_value_t = 10)]
    pub burn_in: u32,
    /// Do not wrap-pad the channel axis (the reference does).
    #[arg(long)]
    pub no_channel_wrap: bool,
    /// Stop with an error when fewer candidate rules than this share pass the band.
    #[arg(long, default_value_t = 0.002)]
    pub min_acceptance: f64,
    /// Simulate with the CPU reference instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
}

impl RuleArgs {
    pub fn spec(&self) -> Result<NcaSpec> {
        let spec = NcaSpec {
            grid: self.grid,
            states: self.states,
            channel_wrap: !self.no_channel_wrap,
            conv_channels: self.conv_channels,
            hidden: self.hidden,
            temperature: self.temperature,
            identity_bias: self.identity_bias,
            burn_in: self.burn_in,
        };
        spec.validate()?;
        Ok(spec)
    }

    pub fn band(&self) -> Result<Band> {
        Band::parse(&self.band)
    }

    /// The simulator these arguments ask for.
    pub fn simulator(&self, spec: &NcaSpec) -> Result<Box<dyn crate::nca::Simulate>> {
        if self.cpu {
            return Ok(Box::new(crate::nca::CpuSimulator::new(spec)?));
        }
        let gpu = Gpu::new(&GpuOptions::default())?;
        Ok(Box::new(crate::nca::gpu::GpuSimulator::new(&gpu, spec)?))
    }
}

/// A progress bar on standard error that stays quiet when it is not a terminal.
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
