//! `ncalm tokenize`: text files, folders, JSON Lines or the default corpus into uint16 token files,
//! streamed: memory stays bounded whatever the size of the inputs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use ncalm::data::corpus::{default_corpus_inputs, list_inputs};
use ncalm::data::text::{
    check_output, check_val_fraction, tokenize_files, TokenizeOptions, TRAIN_FILE, VAL_FILE,
};
use ncalm::data::Tokenizer;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// Files and folders of text. Folders are searched recursively (hidden entries and target/
    /// skipped, binary files skipped); a .jsonl file gives one document per line, its "text" field.
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Directory to write train.bin, val.bin and manifest.json into.
    #[arg(long)]
    out: PathBuf,
    /// gpt2 (GPT-2 BPE, 50,257 tokens) or bytes (UTF-8 bytes, 257 tokens).
    #[arg(long, default_value = "gpt2")]
    tokenizer: String,
    /// Share of documents held out for validation, in (0, 0.5].
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Also tokenize the Rust sources of ncalm's dependencies in the local cargo registry.
    #[arg(long)]
    default_corpus: bool,
    /// Replace a data set already in --out.
    #[arg(long)]
    force: bool,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    if args.inputs.is_empty() && !args.default_corpus {
        bail!(
            "nothing to tokenize: name files or folders of text (INPUT...), or pass --default-corpus to \
             use the Rust sources of ncalm's dependencies in the local cargo registry"
        );
    }
    let tokenizer = Tokenizer::parse(&args.tokenizer)?;
    check_val_fraction(args.val_fraction)?;
    check_output(&args.out, args.force)?;
    let start = Instant::now();
    let mut options = TokenizeOptions::new(tokenizer, args.val_fraction);
    options.overwrite = args.force;
    let mut files = Vec::new();
    if !args.inputs.is_empty() {
        files = list_inputs(&args.inputs)?;
        options.sources.extend(args.inputs.iter().map(|p| p.display().to_string()));
    }
    if args.default_corpus {
        let (corpus, summary) = default_corpus_inputs()?;
        println!(
            "default corpus: {} of {} locked packages in the cargo registry, {} files ({:.1} MB) kept; \
             {} generated files ({:.1} MB, {:.1}% of the bytes) left out",
            summary.packages_found,
            summary.packages_locked,
            summary.files_kept,
            summary.bytes_kept as f64 / 1e6,
            summary.generated_files_left_out,
            summary.generated_bytes_left_out as f64 / 1e6,
            100.0 * summary.generated_share()
        );
        if !summary.packages_missing.is_empty() {
            eprintln!(
                "{} locked packages are missing from the registry, e.g. {}",
                summary.packages_missing.len(),
                summary.packages_missing[0]
            );
        }
        options.sources.extend(summary.registry.iter().cloned());
        options.corpus = Some(summary);
        files.extend(corpus);
    }
    let bar = indicatif::ProgressBar::new(files.iter().map(|f| f.bytes).sum());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(format!("tokenize ({tokenizer})"));
    let (manifest, skipped_binary) = tokenize_files(&files, &options, &args.out, &mut |p| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_read);
        let per_sec = p.tokens as f64 / start.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{} tokens ({:.0} tokens/s)", p.tokens, per_sec));
    })?;
    bar.finish_and_clear();
    if !skipped_binary.is_empty() {
        let (count, first) = (skipped_binary.len(), skipped_binary[0].display());
        let files = if count == 1 { "file" } else { "files" };
        eprintln!("skipped {count} binary {files} (not UTF-8 text), e.g. {first}");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} ({} tokenizer, vocabulary {}, end-of-text {})",
        args.out.display(),
        manifest.tokenizer,
        manifest.vocab_size,
        manifest.eot
    );
    let splits = [
        (TRAIN_FILE, manifest.documents.train, manifest.tokens.train, manifest.bytes.train),
        (VAL_FILE, manifest.documents.val, manifest.tokens.val, manifest.bytes.val),
    ];
    for (file, documents, tokens, bytes) in splits {
        println!(
            "  {file:<9} {documents:>8} documents {tokens:>12} tokens  ({:.2} bytes of text per token)",
            bytes as f64 / tokens.max(1) as f64
        );
    }
    let bytes = manifest.bytes.train + manifest.bytes.val;
    println!("  {:.1} MB of text in {secs:.1} s ({:.1} MB/s)", bytes as f64 / 1e6, bytes as f64 / 1e6 / secs);
    Ok(())
}
