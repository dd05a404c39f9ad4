use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use ncalm::data::tokenizer::Tokenizer;
use ncalm::model::infer::{sample, Generator, Sampling};
use ncalm::model::HostParams;
use ncalm::train::checkpoint;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A checkpoint directory, or a run directory (its latest checkpoint).
    checkpoint: PathBuf,
    #[arg(long, default_value = "")]
    prompt: String,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The model's tokenizer (default: gpt2 for vocabularies of 50,257 and more, bytes for 257..=320).
    #[arg(long)]
    tokenizer: Option<String>,
}

pub fn run(args: SampleArgs) -> Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite() && args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let ck = checkpoint::load(&args.checkpoint)?;
    let vocab = ck.config.vocab_size;
    let tokenizer = match args.tokenizer.as_deref() {
        Some(name) => Tokenizer::parse(name)?,
        None if vocab >= Tokenizer::Gpt2.vocab_size() => Tokenizer::Gpt2,
        None if (Tokenizer::Bytes.vocab_size()..=320).contains(&vocab) => Tokenizer::Bytes,
        None => bail!(
            "this checkpoint's vocabulary ({vocab}) is not a text tokenizer's; pass --tokenizer if it is one"
        ),
    };
    let mut prompt = tokenizer.encode(&args.prompt);
    if prompt.is_empty() {
        prompt.push(tokenizer.eot());
    }
    if prompt.len() + args.max_tokens > ck.config.context as usize {
        bail!(
            "the prompt ({} tokens) and --max-tokens {} exceed the model's context of {}",
            prompt.len(),
            args.max_tokens,
            ck.config.context
        );
    }
    let host = HostParams::from_checkpoint(&ck.config, ck.params)?;
    let mut generator = Generator::new(&ck.config, host);
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = generator.step(t)?;
    }
    let settings = Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    for i in 0..args.max_tokens {
        let next = sample(&logits, &settings, i as u64, tokenizer.vocab_size() as usize);
        if next == tokenizer.eot() {
            break;
        }
        write!(out, "{}", tokenizer.decode(&[next]))?;
        out.flush()?;
        logits = generator.step(next)?;
    }
    writeln!(out)?;
    Ok(())
}
