use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use ncalm::nca::dataset::{load_tokens, Manifest, Split};
use ncalm::nca::stats::{stats_picture, token_stats};
use ncalm::util::write_atomic;

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// A directory written by `ncalm generate`.
    dir: PathBuf,
}

pub fn run(args: StatsArgs) -> Result<()> {
    let manifest = Manifest::load(&args.dir)?;
    let tokens = load_tokens(&args.dir, &manifest, Split::Train)?;
    let stats = token_stats(&tokens, manifest.vocab_size, manifest.grid_token);
    println!("data set        {}", args.dir.display());
    println!(
        "sequences       {} x {} tokens (train), {} (val)",
        manifest.sequences, manifest.stored_len, manifest.val.sequences
    );
    println!("tokens          {}", stats.tokens);
    println!("distinct tokens {} of {}", stats.distinct, manifest.vocab_size);
    println!(
        "zipf slope      {:.3} (over the {} ranks seen at least 5 times)",
        stats.zipf_slope, stats.zipf_ranks
    );
    println!("unigram entropy {:.3} nats", stats.unigram_entropy);
    println!(
        "acceptance      {:.2}% of {} candidates in band ({}, {})",
        100.0 * manifest.acceptance_rate,
        manifest.candidates,
        manifest.band[0],
        manifest.band[1]
    );
    println!("gzip histogram  (candidate ratios, bins of {})", manifest.gzip_histogram_bin_width);
    let peak = manifest.gzip_histogram.iter().copied().max().unwrap_or(1).max(1);
    for (i, &count) in manifest.gzip_histogram.iter().enumerate() {
        let lo = i as f64 * manifest.gzip_histogram_bin_width;
        let bar = "#".repeat((u128::from(count) * 40 / u128::from(peak)) as usize);
        println!("  {lo:.2}-{:.2} {count:>8} {bar}", lo + manifest.gzip_histogram_bin_width);
    }
    let picture = args.dir.join("stats.png");
    stats_picture(&stats, &manifest.gzip_histogram, manifest.gzip_histogram_bin_width, manifest.band)
        .save_png(&picture)?;
    let json = serde_json::json!({
        "tokens": stats.tokens, "distinct": stats.distinct, "zipf_slope": stats.zipf_slope,
        "zipf_ranks": stats.zipf_ranks, "unigram_entropy_nats": stats.unigram_entropy,
        "acceptance_rate": manifest.acceptance_rate, "gzip_histogram": manifest.gzip_histogram,
    });
    write_atomic(&args.dir.join("stats.json"), (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
    println!("wrote {} and stats.json", picture.display());
    Ok(())
}
