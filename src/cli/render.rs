use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::RuleArgs;
use ncalm::nca::dataset::{search_rules, sequence_key, Split};
use ncalm::nca::reference::rollout;
use ncalm::nca::render::save_trajectory;
use ncalm::nca::{CpuSimulator, Rule, TokenLayout};

#[derive(Args, Debug)]
pub struct RenderArgs {
    /// Output picture: FILE.png (frames side by side) or FILE.gif (animated).
    #[arg(long)]
    out: PathBuf,
    /// Which accepted training rule of this seed and band (rule K of `generate --seed S`).
    #[arg(long, default_value_t = 0)]
    rule_index: u64,
    /// Which of the rule's simulations (its K-th sequence in train.bin).
    #[arg(long, default_value_t = 0)]
    sim: u64,
    /// Frames to draw; default: as many as one sequence of --seq-len holds.
    #[arg(long)]
    frames: Option<u32>,
    /// Sequence length the default frame count follows.
    #[arg(long, default_value_t = 1024)]
    seq_len: u32,
    /// Pixels per cell.
    #[arg(long, default_value_t = 8)]
    scale: u32,
    #[command(flatten)]
    rule: RuleArgs,
}

pub fn run(args: RenderArgs) -> Result<()> {
    let spec = args.rule.spec()?;
    let layout = TokenLayout::new(&spec, args.seq_len)?;
    let frames = args.frames.unwrap_or(layout.frames());
    if frames == 0 || frames > 10_000 {
        anyhow::bail!("--frames must be in 1..=10000, got {frames}");
    }
    if !(1..=64).contains(&args.scale) {
        anyhow::bail!("--scale must be in 1..=64 pixels per cell, got {}", args.scale);
    }
    // Finding one rule searches only its own candidate stream: cheap, so the reference does it.
    let settings = args.rule.search();
    let sim = CpuSimulator::new(&spec)?;
    let found = search_rules(
        &sim,
        &spec,
        args.rule.seed,
        Split::Train,
        args.rule_index..args.rule_index + 1,
        &settings,
        &mut |_| {},
    )?;
    let rule = found.rules[0];
    let table = Rule::sample(&spec, rule.key).table(&spec);
    let trajectory = rollout(&spec, &table, sequence_key(rule.key, 0, args.sim), frames);
    save_trajectory(&args.out, &trajectory, spec.grid, args.scale)?;
    println!(
        "wrote {}: rule {} (candidate {}, gzip ratio {:.3}), simulation {}, {frames} frames from step {}",
        args.out.display(),
        args.rule_index,
        rule.attempt,
        rule.ratio,
        args.sim,
        spec.burn_in
    );
    Ok(())
}
