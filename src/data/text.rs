//! Tokenized text data sets: `train.bin` and `val.bin`, flat little-endian uint16 token files in the
//! nanoGPT layout with every document followed by the end-of-text token, and `manifest.json`, what
//! produced them. Documents go to train or val by a stable hash of their source, so a document's
//! split depends neither on the order of the inputs nor on the other documents.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::corpus::{CorpusSummary, Document};
use super::tokenizer::Tokenizer;
use super::tokens::Tokens;
use crate::util::{write_atomic, AtomicFile};

pub const MANIFEST: &str = "manifest.json";
pub const TRAIN_FILE: &str = "train.bin";
pub const VAL_FILE: &str = "val.bin";
pub const FORMAT: &str = "ncalm-text-tokens-v1";

/// The vocabulary of a directory without a manifest: nanoGPT's prepared data sets (OpenWebText,
/// Shakespeare with BPE) are GPT-2 tokens.
const NANOGPT_TOKENIZER: Tokenizer = Tokenizer::Gpt2;

/// Text handed to the tokenizer threads at a time: bounds memory and paces the progress report.
const BATCH_BYTES: usize = 8 << 20;

/// A count per split.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: u64,
    pub val: u64,
}

impl SplitCounts {
    fn add(&mut self, is_val: bool, n: u64) {
        if is_val {
            self.val += n;
        } else {
            self.train += n;
        }
    }
}

/// `manifest.json` of a tokenized text data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextManifest {
    pub format: String,
    pub dtype: String,
    pub tokenizer: Tokenizer,
    pub vocab_size: u32,
    /// The end-of-text token that follows every document.
    pub eot: u32,
    pub documents: SplitCounts,
    /// Tokens in each file, end-of-text tokens included.
    pub tokens: SplitCounts,
    /// UTF-8 bytes of text in each split.
    pub bytes: SplitCounts,
    /// The inputs as given.
    pub sources: Vec<String>,
    pub val_fraction: f64,
    /// How documents were assigned to val.
    pub split_rule: String,
    /// Files inside input folders skipped as binary.
    pub skipped_binary_files: u64,
    /// Present when the default corpus was used.
    pub corpus: Option<CorpusSummary>,
    pub generator: String,
}

/// Everything [`tokenize_with`] needs besides the documents.
#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    pub tokenizer: Tokenizer,
    /// The share of documents held out, in (0, 0.5].
    pub val_fraction: f64,
    /// Recorded in the manifest: the inputs as given.
    pub sources: Vec<String>,
    /// Recorded in the manifest when the default corpus was used.
    pub corpus: Option<CorpusSummary>,
    pub skipped_binary_files: u64,
    /// Replace a data set already in the output directory.
    pub overwrite: bool,
}

impl TokenizeOptions {
    pub fn new(tokenizer: Tokenizer, val_fraction: f64) -> Self {
        Self {
            tokenizer,
            val_fraction,
            sources: Vec::new(),
            corpus: None,
            skipped_binary_files: 0,
            overwrite: false,
        }
    }
}

/// FNV-1a, 64 bits: simple, stable across versions and platforms (unlike std's hasher).
pub fn fnv1a64(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in text.as_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub fn check_val_fraction(val_fraction: f64) -> Result<()> {
    if !(val_fraction > 0.0 && val_fraction <= 0.5) {
        bail!("--val-fraction must be in (0, 0.5], got {val_fraction}");
    }
    Ok(())
}

/// Which documents are held out: those whose source hashes below `val_fraction` of the hash range.
/// Neither split may be empty: with too few documents for the fraction to pick any (or to leave
/// any), the document with the smallest hash goes to val (the one with the largest to train).
pub fn split_documents(documents: &[Document], val_fraction: f64) -> Result<Vec<bool>> {
    check_val_fraction(val_fraction)?;
    if documents.len() < 2 {
        bail!(
            "need at least two documents to hold one out for validation, got {}; split the text into \
             several files, or into lines of a .jsonl file",
            documents.len()
        );
    }
    let hashes: Vec<u64> = documents.iter().map(|d| fnv1a64(&d.source)).collect();
    let mut is_val: Vec<bool> = hashes.iter().map(|&h| (h as f64 / 2f64.powi(64)) < val_fraction).collect();
    let by_hash = |(i, h): (usize, &u64)| (*h, i);
    if !is_val.contains(&true) {
        let (_, lowest) = hashes.iter().enumerate().map(by_hash).min().expect("two documents");
        is_val[lowest] = true;
    }
    if !is_val.contains(&false) {
        let (_, highest) = hashes.iter().enumerate().map(by_hash).max().expect("two documents");
        is_val[highest] = false;
    }
    Ok(is_val)
}

/// Refuses to write over a data set unless `overwrite` is set.
pub fn check_output(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a directory", out.display());
    }
    if !overwrite {
        for existing in [MANIFEST, TRAIN_FILE] {
            if out.join(existing).exists() {
                bail!("{} already holds a data set ({existing}); pass --force to replace it", out.display());
            }
        }
    }
    Ok(())
}

/// Tokenizes `documents` into `out` (see [`tokenize_with`]), recording no sources.
pub fn tokenize(
    documents: &[Document],
    tokenizer: Tokenizer,
    val_fraction: f64,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<TextManifest> {
    tokenize_with(documents, &TokenizeOptions::new(tokenizer, val_fraction), out, progress)
}

/// Splits the documents, tokenizes them on all cores, and writes `train.bin`, `val.bin` and then
/// `manifest.json` into `out`, each under a temporary name renamed into place, so an interrupted run
/// never leaves a manifest beside incomplete files. `progress` is told documents done and the total.
pub fn tokenize_with(
    documents: &[Document],
    options: &TokenizeOptions,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<TextManifest> {
    check_output(out, options.overwrite)?;
    let is_val = split_documents(documents, options.val_fraction)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let tokenizer = options.tokenizer;
    let eot = u16::try_from(tokenizer.eot()).context("end-of-text token does not fit in uint16")?;
    let mut train = AtomicFile::create(&out.join(TRAIN_FILE))?;
    let mut val = AtomicFile::create(&out.join(VAL_FILE))?;
    let (mut counts, mut tokens, mut bytes) =
        (SplitCounts::default(), SplitCounts::default(), SplitCounts::default());
    let total = documents.len() as u64;
    let mut done = 0;
    progress(0, total);
    for range in batches(documents) {
        let encode = |d: &Document| {
            let ids = tokenizer.encode(&d.text);
            let mut le = Vec::with_capacity(2 * ids.len() + 2);
            for id in ids {
                // Both vocabularies fit in uint16, so this never truncates.
                le.extend_from_slice(&(id as u16).to_le_bytes());
            }
            le.extend_from_slice(&eot.to_le_bytes());
            le
        };
        let encoded: Vec<Vec<u8>> = documents[range.clone()].par_iter().map(encode).collect();
        for (index, le) in range.zip(encoded) {
            let held_out = is_val[index];
            let (file, name) = if held_out { (&mut val, VAL_FILE) } else { (&mut train, TRAIN_FILE) };
            file.writer().write_all(&le).with_context(|| format!("writing {}", out.join(name).display()))?;
            counts.add(held_out, 1);
            tokens.add(held_out, le.len() as u64 / 2);
            bytes.add(held_out, documents[index].text.len() as u64);
            done += 1;
        }
        progress(done, total);
    }
    let manifest = TextManifest {
        format: FORMAT.to_string(),
        dtype: "uint16-le".to_string(),
        tokenizer,
        vocab_size: tokenizer.vocab_size(),
        eot: tokenizer.eot(),
        documents: counts,
        tokens,
        bytes,
        sources: options.sources.clone(),
        val_fraction: options.val_fraction,
        split_rule: "val iff fnv1a64(document source) / 2^64 < val_fraction; neither split left empty"
            .to_string(),
        skipped_binary_files: options.skipped_binary_files,
        corpus: options.corpus.clone(),
        generator: format!("ncalm {}", env!("CARGO_PKG_VERSION")),
    };
    // A replaced data set loses its manifest before its token files change, so no moment pairs the
    // old manifest with new files.
    if options.overwrite {
        match std::fs::remove_file(out.join(MANIFEST)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot replace {}", out.join(MANIFEST).display()))
            }
        }
    }
    train.commit()?;
    val.commit()?;
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write_atomic(&out.join(MANIFEST), json.as_bytes())?;
    Ok(manifest)
}

/// Consecutive ranges of documents holding about [`BATCH_BYTES`] of text each.
fn batches(documents: &[Document]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (index, document) in documents.iter().enumerate() {
        size += document.text.len();
        if size >= BATCH_BYTES {
            ranges.push(start..index + 1);
            (start, size) = (index + 1, 0);
        }
    }
    if start < documents.len() {
        ranges.push(start..documents.len());
    }
    ranges
}

/// Token files ready for training: a `tokenize` output, or a nanoGPT-format directory.
#[derive(Clone, Debug)]
pub struct TextData {
    /// Mapped token files: clones share the mapping.
    pub train: Tokens,
    pub val: Tokens,
    pub vocab_size: u32,
    pub tokenizer: Option<Tokenizer>,
    pub eot: Option<u32>,
}

impl TextData {
    /// Reads `train.bin` and `val.bin` of `dir`. With a `manifest.json` (written by `ncalm tokenize`)
    /// the files must hold the counts it promises; without one, the directory is taken to be nanoGPT's
    /// layout of GPT-2 tokens (OpenWebText as nanoGPT prepares it, for example). Either way every id
    /// must lie below the vocabulary size, and neither split may be empty.
    pub fn open(dir: &Path) -> Result<TextData> {
        if !dir.is_dir() {
            bail!("{} is not a directory (expected one holding train.bin and val.bin)", dir.display());
        }
        for file in [TRAIN_FILE, VAL_FILE] {
            if !dir.join(file).is_file() {
                bail!(
                    "{} has no {file}: a text data set is a directory holding train.bin and val.bin \
                     (from `ncalm tokenize`, or nanoGPT's prepare scripts)",
                    dir.display()
                );
            }
        }
        let manifest = load_manifest(dir)?;
        let (tokenizer, counts) = match &manifest {
            Some(m) => (m.tokenizer, Some(m.tokens)),
            None => (NANOGPT_TOKENIZER, None),
        };
        let vocab_size = tokenizer.vocab_size();
        let hint = if manifest.is_none() {
            " (a directory without manifest.json is read as GPT-2 tokens, as nanoGPT writes them)"
        } else {
            ""
        };
        let train = read_tokens(&dir.join(TRAIN_FILE), vocab_size, counts.map(|c| c.train), hint)?;
        let val = read_tokens(&dir.join(VAL_FILE), vocab_size, counts.map(|c| c.val), hint)?;
        Ok(TextData { train, val, vocab_size, tokenizer: Some(tokenizer), eot: Some(tokenizer.eot()) })
    }
}

/// Reads and checks `dir/manifest.json`, if there is one.
pub fn load_manifest(dir: &Path) -> Result<Option<TextManifest>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid ncalm text manifest", path.display()))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(crate::nca::dataset::FORMAT) => {
            bail!(
                "{} is an NCA data set ({}), not tokenized text",
                dir.display(),
                crate::nca::dataset::FORMAT
            )
        }
        other => bail!("{}: format {other:?}, expected {FORMAT:?}", path.display()),
    }
    let manifest: TextManifest = serde_json::from_value(value)
        .with_context(|| format!("{} is not a valid ncalm text manifest", path.display()))?;
    let t = manifest.tokenizer;
    if manifest.vocab_size != t.vocab_size() || manifest.eot != t.eot() {
        bail!(
            "{}: vocab_size {} and eot {} disagree with tokenizer {t} ({} and {})",
            path.display(),
            manifest.vocab_size,
            manifest.eot,
            t.vocab_size(),
            t.eot()
        );
    }
    Ok(Some(manifest))
}

/// Maps a uint16 token file, checking its length against `expected` tokens and every id against
/// `vocab_size`. The file is mapped, not read into memory: OpenWebText's is 17 GB.
fn read_tokens(path: &Path, vocab_size: u32, expected: Option<u64>, hint: &str) -> Result<Tokens> {
    let tokens = Tokens::open(path)?;
    let count = tokens.len() as u64;
    if let Some(expected) = expected.filter(|&e| e != count) {
        bail!("{} holds {count} tokens but manifest.json promises {expected}", path.display());
    }
    if count == 0 {
        bail!("{} is empty: it holds no tokens", path.display());
    }
    if let Some(at) = tokens.first_at_or_above(vocab_size) {
        bail!(
            "{}: token {} at position {at} is not below the vocabulary size {vocab_size}{hint}",
            path.display(),
            tokens[at]
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(source: &str, text: &str) -> Document {
        Document { source: source.to_string(), text: text.to_string() }
    }

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_split_is_stable_and_never_empty() {
        let docs: Vec<Document> = (0..2000).map(|i| doc(&format!("file{i}.txt"), "x")).collect();
        let split = split_documents(&docs, 0.05).unwrap();
        let val = split.iter().filter(|&&v| v).count();
        assert!((60..140).contains(&val), "{val} of 2000 held out at 5%");
        // A document's split does not depend on the others or on their order.
        let reversed: Vec<Document> = docs.iter().rev().cloned().collect();
        let split_reversed = split_documents(&reversed, 0.05).unwrap();
        assert!(split.iter().rev().eq(split_reversed.iter()));
        // Too few documents for the fraction to pick one: the smallest hash is held out anyway.
        let pair = [doc("a", "x"), doc("b", "y")];
        for fraction in [1e-9, 0.5] {
            let split = split_documents(&pair, fraction).unwrap();
            assert_eq!(split.iter().filter(|&&v| v).count(), 1, "{fraction}");
        }
        assert!(split_documents(&pair[..1], 0.05).is_err());
        for bad in [0.0, -0.1, 0.51, f64::NAN] {
            assert!(split_documents(&pair, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokenize_then_open_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<Document> =
            (0..40).map(|i| doc(&format!("d{i}"), &format!("document {i}: héllo"))).collect();
        for tokenizer in Tokenizer::ALL {
            let out = dir.path().join(tokenizer.name());
            let mut calls = 0;
            let manifest = tokenize(&docs, tokenizer, 0.2, &out, &mut |_, _| calls += 1).unwrap();
            assert!(calls >= 2);
            assert_eq!(manifest.documents.train + manifest.documents.val, 40);
            assert!(manifest.documents.val > 0);
            let data = TextData::open(&out).unwrap();
            assert_eq!((data.tokenizer, data.eot), (Some(tokenizer), Some(tokenizer.eot())));
            assert_eq!(data.train.len() as u64, manifest.tokens.train);
            let eots = data.train.iter().chain(data.val.iter()).filter(|&&t| u32::from(t) == tokenizer.eot());
            assert_eq!(eots.count(), 40);
            let ids: Vec<u32> = data.train.iter().map(|&t| u32::from(t)).collect();
            let text = tokenizer.decode(&ids);
            assert!(text.starts_with("document ") && text.ends_with("héllo<|endoftext|>"), "{text}");
            assert!(tokenize(&docs, tokenizer, 0.2, &out, &mut |_, _| {}).is_err());
        }
    }

    #[test]
    fn damaged_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d");
        let docs: Vec<Document> = (0..10).map(|i| doc(&format!("d{i}"), "abc")).collect();
        tokenize(&docs, Tokenizer::Bytes, 0.3, &out, &mut |_, _| {}).unwrap();
        let train = out.join(TRAIN_FILE);
        let mut bytes = std::fs::read(&train).unwrap();
        bytes[6..8].copy_from_slice(&300u16.to_le_bytes());
        std::fs::write(&train, &bytes).unwrap();
        let err = format!("{:#}", TextData::open(&out).unwrap_err());
        assert!(err.contains("token 300 at position 3") && err.contains("257"), "{err}");
        bytes.pop();
        std::fs::write(&train, &bytes).unwrap();
        let err = format!("{:#}", TextData::open(&out).unwrap_err());
        assert!(err.contains("not a whole number"), "{err}");
        bytes.pop();
        std::fs::write(&train, &bytes).unwrap();
        let err = format!("{:#}", TextData::open(&out).unwrap_err());
        assert!(err.contains("manifest.json promises"), "{err}");
        std::fs::remove_file(out.join(VAL_FILE)).unwrap();
        let err = format!("{:#}", TextData::open(&out).unwrap_err());
        assert!(err.contains("no val.bin"), "{err}");
    }
}
