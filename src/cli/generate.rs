use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::{progress_bar, with_default, RuleArgs};
use ncalm::nca::dataset::{generate, GenerateConfig, Shard, MANIFEST};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Directory to write train.bin, val.bin and manifest.json into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, help = with_default("Training rules (each passes the complexity filter)", |d| d.rules))]
    rules: Option<u64>,
    #[arg(long, help = with_default("Held-out validation rules", |d| d.val_rules))]
    val_rules: Option<u64>,
    /// Sequences simulated per rule (each from its own initial grid).
    #[arg(long, default_value_t = 1)]
    sims_per_rule: u64,
    /// Model context L; each stored sequence holds L + 1 tokens.
    #[arg(long, default_value_t = 1024)]
    seq_len: u32,
    /// Write only part I of N (0-based); the parts' files concatenate in order to the whole.
    #[arg(long, default_value = "0/1")]
    shard: String,
    /// Replace a data set already in --out.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    rule: RuleArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let data = args.rule.data();
    data.spec.validate()?;
    let cfg = GenerateConfig {
        spec: data.spec,
        seq_len: args.seq_len,
        rules: args.rules.unwrap_or(data.rules),
        val_rules: args.val_rules.unwrap_or(data.val_rules),
        sims_per_rule: args.sims_per_rule,
        seed: args.rule.seed,
        shard: Shard::parse(&args.shard)?,
        search: args.rule.search(),
    };
    cfg.validate()?;
    if args.out.join(MANIFEST).exists() && !args.force {
        bail!("{} already holds a data set (manifest.json); pass --force to replace it", args.out.display());
    }
    let sim = args.rule.simulator(&cfg.spec)?;
    eprintln!("simulating on {}", sim.describe());
    let start = Instant::now();
    let bar = progress_bar(0, "");
    let mut stage = String::new();
    let manifest = generate(sim.as_ref(), &cfg, &args.out, &mut |what, done, total| {
        if stage != what {
            stage = what.to_string();
            bar.reset();
            bar.set_message(what.to_string());
            bar.set_length(total);
        }
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let all_tokens = manifest.tokens + manifest.val.tokens;
    println!(
        "wrote {} ({} rules, band {}:{})",
        args.out.display(),
        manifest.accepted,
        cfg.search.band.lower,
        cfg.search.band.upper
    );
    for s in [&manifest.train, &manifest.val] {
        println!(
            "  {:<9} {:>7} sequences {:>11} tokens  rules {}..{}  acceptance {:.1}% ({} of {} candidates)",
            s.file,
            s.sequences,
            s.tokens,
            s.rules[0],
            s.rules[1],
            100.0 * s.acceptance_rate,
            s.accepted,
            s.candidates
        );
    }
    println!(
        "  acceptance {:.1}% overall; {:.0} tokens/s end to end ({secs:.1} s)",
        100.0 * manifest.acceptance_rate,
        all_tokens as f64 / secs
    );
    Ok(())
}
