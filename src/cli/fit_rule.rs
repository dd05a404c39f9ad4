use anyhow::Result;
use clap::Args;

use super::RuleArgs;
use ncalm::nca::fit::{fit_rule, FitSettings};
use ncalm::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct FitRuleArgs {
    /// Which accepted training rule of --seed to recover (rule K of `generate --seed S`).
    #[arg(long, default_value_t = 0)]
    rule_index: u64,
    /// Trajectories of the hidden rule to learn from.
    #[arg(long, default_value_t = 16)]
    sims: u32,
    /// Transitions per trajectory.
    #[arg(long, default_value_t = 12)]
    frames: u32,
    /// Convolution channels of the fitted network.
    #[arg(long, default_value_t = 16)]
    channels: u32,
    /// Hidden units of the fitted per-cell MLP.
    #[arg(long = "fit-hidden", default_value_t = 64)]
    fit_hidden: u32,
    #[arg(long, default_value_t = 400)]
    steps: u32,
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    rule: RuleArgs,
}

pub fn run(args: FitRuleArgs) -> Result<()> {
    let spec = args.rule.spec()?;
    let search = args.rule.search();
    let fit = FitSettings {
        sims: args.sims,
        frames: args.frames,
        channels: args.channels,
        hidden: args.fit_hidden,
        steps: args.steps,
        lr: args.lr,
        seed: args.rule.seed,
    };
    let gpu = Gpu::new(&GpuOptions::default())?;
    let report = fit_rule(&gpu, &spec, &search, args.rule_index, &fit, &mut |l| eprintln!("{l}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "rule {} (gzip ratio {:.3}): the fitted rule predicts {:.1}% of next-state cells of fresh trajectories \
             ({} cells; always guessing the commonest state: {:.1}%, chance 1/{}: {:.1}%)",
            report.rule_index,
            report.gzip_ratio,
            100.0 * report.accuracy,
            report.cells_evaluated,
            100.0 * report.majority_baseline,
            spec.states,
            100.0 / f64::from(spec.states)
        );
    }
    Ok(())
}
