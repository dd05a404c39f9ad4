use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use ncalm::train::eval::{evaluate_tokens, read_u16_tokens};
use ncalm::{Gpu, GpuOptions};

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    /// A data directory: its val.bin is evaluated (`tokenize`, `generate` or nanoGPT output).
    #[arg(long, conflicts_with = "tokens")]
    data: Option<PathBuf>,
    /// A flat uint16 token file: consecutive blocks of seq-len + 1 tokens.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Inputs per block (default: the model's context).
    #[arg(long)]
    seq_len: Option<u32>,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Evaluate at most this many blocks.
    #[arg(long, default_value_t = usize::MAX)]
    max_sequences: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let file = match (&args.data, &args.tokens) {
        (Some(dir), None) => dir.join("val.bin"),
        (None, Some(f)) => f.clone(),
        _ => anyhow::bail!("give --data DIR (its val.bin) or --tokens FILE"),
    };
    let tokens = read_u16_tokens(&file)?;
    let ck = ncalm::train::checkpoint::resolve(&args.checkpoint)?;
    let context = ncalm::train::checkpoint::load(&ck)?.config.context;
    let gpu = Gpu::new(&GpuOptions::default())?;
    let r =
        evaluate_tokens(&gpu, &ck, &tokens, args.seq_len.unwrap_or(context), args.batch, args.max_sequences)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: loss {:.6} nats, perplexity {:.4} over {} targets in {} blocks",
            ck.display(),
            r.loss,
            r.perplexity,
            r.targets,
            r.sequences
        );
    }
    Ok(())
}
