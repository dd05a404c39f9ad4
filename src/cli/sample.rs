use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use ncalm::data::tokenizer::Tokenizer;
use ncalm::model::infer::{GpuGenerator, Sampling};
use ncalm::model::HostParams;
use ncalm::train::checkpoint;
use ncalm::{Gpu, GpuOptions};

/// Decode steps per submission: the text is printed, and the end of text looked for, after each.
const CHUNK: u32 = 16;

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
    let gpu = Gpu::new(&GpuOptions::default())?;
    let settings = Sampling { temperature: args.temperature, top_p: args.top_p, seed: args.seed };
    let mut generator = GpuGenerator::new(&gpu, &ck.config, &host, settings)?;
    generator.set_allowed(tokenizer.vocab_size().min(vocab))?;
    generator.set_prompt(&prompt)?;
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    // P - 1 steps of prefill, then one step per new token; the tokens come back every CHUNK steps.
    let total = (prompt.len() - 1 + args.max_tokens) as u32;
    let mut printed = prompt.len();
    while generator.position() < total {
        generator.generate(CHUNK.min(total - generator.position()))?;
        let tokens = generator.read_tokens()?;
        let new = &tokens[printed.min(tokens.len())..];
        let end = new.iter().position(|&t| t == tokenizer.eot());
        let shown = &new[..end.unwrap_or(new.len())];
        write!(out, "{}", tokenizer.decode(shown))?;
        out.flush()?;
        printed += new.len();
        if end.is_some() {
            break;
        }
    }
    writeln!(out)?;
    Ok(())
}
