//! Tokenized text data sets: `train.bin` and `val.bin`, flat little-endian uint16 token files in the
//! nanoGPT layout with every document followed by the end-of-text token, and `manifest.json`, what
//! produced them. Documents go to train or val by a stable hash of their source, so a document's
//! split depends neither on the order of the inputs nor on the other documents.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::corpus::{read_documents, CorpusSummary, Document, InputFile};
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

    /// Moves `n` from train to val (`to_val`), or back.
    fn shift(&mut self, to_val: bool, n: u64) {
        let (from, to) =
            if to_val { (&mut self.train, &mut self.val) } else { (&mut self.val, &mut self.train) };
        *from -= n;
        *to += n;
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
    /// Text handed to the tokenizer threads at a time.
    pub batch_bytes: usize,
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
            batch_bytes: BATCH_BYTES,
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

/// Whether a document whose source hashes to `hash` is held out: the hash lies below `val_fraction`
/// of the hash range.
fn held_out(hash: u64, val_fraction: f64) -> bool {
    (hash as f64 / 2f64.powi(64)) < val_fraction
}

fn check_document_count(documents: u64) -> Result<()> {
    if documents < 2 {
        bail!(
            "need at least two documents to hold one out for validation, got {documents}; split the text \
             into several files, or into lines of a .jsonl file"
        );
    }
    Ok(())
}

/// Which documents are held out: those whose source hashes below `val_fraction` of the hash range.
/// Neither split may be empty: with too few documents for the fraction to pick any (or to leave
/// any), the document with the smallest hash goes to val (the one with the largest to train).
pub fn split_documents(documents: &[Document], val_fraction: f64) -> Result<Vec<bool>> {
    check_val_fraction(val_fraction)?;
    check_document_count(documents.len() as u64)?;
    let hashes: Vec<u64> = documents.iter().map(|d| fnv1a64(&d.source)).collect();
    let mut is_val: Vec<bool> = hashes.iter().map(|&h| held_out(h, val_fraction)).collect();
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

/// Splits the documents held in memory, tokenizes them on all cores, and writes `train.bin`,
/// `val.bin` and then `manifest.json` into `out` (under temporary names, renamed when complete).
/// `progress` is told documents done and the total.
pub fn tokenize_with(
    documents: &[Document],
    options: &TokenizeOptions,
    out: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<TextManifest> {
    check_output(out, options.overwrite)?;
    check_val_fraction(options.val_fraction)?;
    check_document_count(documents.len() as u64)?;
    let mut writer = SplitWriter::create(out, options)?;
    let total = documents.len() as u64;
    progress(0, total);
    for range in batches(documents, options.batch_bytes) {
        writer.write_batch(&documents[range])?;
        progress(writer.documents.train + writer.documents.val, total);
    }
    writer.finish(options)
}

/// How far [`tokenize_files`] has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamProgress {
    /// Bytes of the input files read, of `bytes_total`.
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub documents: u64,
    /// Tokens written, end-of-text tokens included.
    pub tokens: u64,
}

/// Tokenizes the documents of `files` into `out` as they are read, with the same output as
/// [`collect`](super::corpus::collect) followed by [`tokenize_with`], in memory bounded by a few
/// batches (see [`read_documents`]) whatever the size of the inputs. A thread reads the next batch
/// while all cores encode the current one. Returns the manifest and the binary files skipped.
pub fn tokenize_files(
    files: &[InputFile],
    options: &TokenizeOptions,
    out: &Path,
    progress: &mut dyn FnMut(StreamProgress),
) -> Result<(TextManifest, Vec<PathBuf>)> {
    check_output(out, options.overwrite)?;
    check_val_fraction(options.val_fraction)?;
    let created = !out.exists();
    let written = stream_into(files, options, out, progress);
    if written.is_err() && created {
        // Leave no empty folder behind; one holding anything else is not removed.
        let _ = std::fs::remove_dir(out);
    }
    written
}

fn stream_into(
    files: &[InputFile],
    options: &TokenizeOptions,
    out: &Path,
    progress: &mut dyn FnMut(StreamProgress),
) -> Result<(TextManifest, Vec<PathBuf>)> {
    let mut writer = SplitWriter::create(out, options)?;
    let mut state = StreamProgress { bytes_total: files.iter().map(|f| f.bytes).sum(), ..Default::default() };
    progress(state);
    // One batch waits in the channel while one is read and one encoded: memory stays bounded.
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(Vec<Document>, u64)>(1);
    let batch_bytes = options.batch_bytes;
    let (written, read) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || {
            read_documents(files, batch_bytes, &mut |batch, read| sender.send((batch, read)).is_ok())
        });
        let mut written = Ok(());
        // Ends when the reader is done; on an error, dropping the receiver stops the reader.
        for (batch, read) in receiver {
            if let Err(e) = writer.write_batch(&batch) {
                written = Err(e);
                break;
            }
            state.bytes_read = read;
            state.documents = writer.documents.train + writer.documents.val;
            state.tokens = writer.tokens.train + writer.tokens.val;
            progress(state);
        }
        (written, reader.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    });
    written?;
    let read = read?;
    if read.documents == 0 {
        let skipped = match read.skipped_binary.len() {
            0 => String::new(),
            n => format!(" ({n} binary files skipped)"),
        };
        bail!("no text was found in the inputs {}{skipped}", options.sources.join(", "));
    }
    check_document_count(read.documents)?;
    let options =
        TokenizeOptions { skipped_binary_files: read.skipped_binary.len() as u64, ..options.clone() };
    Ok((writer.finish(&options)?, read.skipped_binary))
}

/// Where a document went in its split's file, in tokens, and its size: enough to move it.
#[derive(Clone, Copy, Debug)]
struct Placed {
    hash: u64,
    offset: u64,
    tokens: u64,
    bytes: u64,
}

/// Writes documents into `train.bin` and `val.bin` batch by batch, in order, each under a temporary
/// name renamed into place by [`SplitWriter::finish`] (the manifest last), so an interrupted run never
/// leaves a manifest beside incomplete files. The split of [`split_documents`] is decided document by
/// document; only its rule that neither split be empty needs all of them: if one is empty at the end,
/// the one document [`split_documents`] would move is taken out of the other file.
struct SplitWriter {
    out: PathBuf,
    tokenizer: Tokenizer,
    val_fraction: f64,
    eot: u16,
    train: AtomicFile,
    val: AtomicFile,
    documents: SplitCounts,
    tokens: SplitCounts,
    bytes: SplitCounts,
    /// The training document with the smallest hash (the first of equals) and the validation one with
    /// the largest (the last of equals): the ones moved when the other split is empty.
    lowest_train: Option<Placed>,
    highest_val: Option<Placed>,
}

impl SplitWriter {
    fn create(out: &Path, options: &TokenizeOptions) -> Result<Self> {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let tokenizer = options.tokenizer;
        Ok(Self {
            out: out.to_path_buf(),
            tokenizer,
            val_fraction: options.val_fraction,
            eot: u16::try_from(tokenizer.eot()).context("end-of-text token does not fit in uint16")?,
            train: AtomicFile::create(&out.join(TRAIN_FILE))?,
            val: AtomicFile::create(&out.join(VAL_FILE))?,
            documents: SplitCounts::default(),
            tokens: SplitCounts::default(),
            bytes: SplitCounts::default(),
            lowest_train: None,
            highest_val: None,
        })
    }

    /// Encodes `documents` on all cores and appends them, in order, to their splits.
    fn write_batch(&mut self, documents: &[Document]) -> Result<()> {
        let (tokenizer, eot) = (self.tokenizer, self.eot);
        let encode = |d: &Document| {
            let ids = tokenizer.encode(&d.text);
            let mut le = Vec::with_capacity(2 * ids.len() + 2);
            for id in ids {
                // Both vocabularies fit in uint16, so this never truncates.
                le.extend_from_slice(&(id as u16).to_le_bytes());
            }
            le.extend_from_slice(&eot.to_le_bytes());
            (fnv1a64(&d.source), le)
        };
        let encoded: Vec<(u64, Vec<u8>)> = documents.par_iter().map(encode).collect();
        for (document, (hash, le)) in documents.iter().zip(encoded) {
            let is_val = held_out(hash, self.val_fraction);
            let placed = Placed {
                hash,
                offset: if is_val { self.tokens.val } else { self.tokens.train },
                tokens: le.len() as u64 / 2,
                bytes: document.text.len() as u64,
            };
            let (file, name) = if is_val {
                if self.highest_val.is_none_or(|p| hash >= p.hash) {
                    self.highest_val = Some(placed);
                }
                (&mut self.val, VAL_FILE)
            } else {
                if self.lowest_train.is_none_or(|p| hash < p.hash) {
                    self.lowest_train = Some(placed);
                }
                (&mut self.train, TRAIN_FILE)
            };
            file.writer()
                .write_all(&le)
                .with_context(|| format!("writing {}", self.out.join(name).display()))?;
            self.documents.add(is_val, 1);
            self.tokens.add(is_val, placed.tokens);
            self.bytes.add(is_val, placed.bytes);
        }
        Ok(())
    }

    /// Keeps neither split empty, then renames the token files into place and writes the manifest.
    fn finish(mut self, options: &TokenizeOptions) -> Result<TextManifest> {
        check_document_count(self.documents.train + self.documents.val)?;
        if self.documents.val == 0 {
            let placed = self.lowest_train.expect("a training document");
            self.train = move_document(self.train, &mut self.val, placed, &self.out.join(TRAIN_FILE))?;
            self.shift(placed, true);
        } else if self.documents.train == 0 {
            let placed = self.highest_val.expect("a validation document");
            self.val = move_document(self.val, &mut self.train, placed, &self.out.join(VAL_FILE))?;
            self.shift(placed, false);
        }
        let tokenizer = self.tokenizer;
        let manifest = TextManifest {
            format: FORMAT.to_string(),
            dtype: "uint16-le".to_string(),
            tokenizer,
            vocab_size: tokenizer.vocab_size(),
            eot: tokenizer.eot(),
            documents: self.documents,
            tokens: self.tokens,
            bytes: self.bytes,
            sources: options.sources.clone(),
            val_fraction: options.val_fraction,
            split_rule: "val iff fnv1a64(document source) / 2^64 < val_fraction; neither split left empty"
                .to_string(),
            skipped_binary_files: options.skipped_binary_files,
            corpus: options.corpus.clone(),
            generator: format!("ncalm {}", env!("CARGO_PKG_VERSION")),
        };
        let out = &self.out;
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
        self.train.commit()?;
        self.val.commit()?;
        let json = serde_json::to_string_pretty(&manifest)? + "\n";
        write_atomic(&out.join(MANIFEST), json.as_bytes())?;
        Ok(manifest)
    }

    /// Counts a document moved into val (`to_val`) or into train.
    fn shift(&mut self, placed: Placed, to_val: bool) {
        self.documents.shift(to_val, 1);
        self.tokens.shift(to_val, placed.tokens);
        self.bytes.shift(to_val, placed.bytes);
    }
}

/// Moves the document at `placed` out of `from` (bound for `path`) to the end of `to`: returns `from`
/// rewritten without it. Copies through a small buffer, so memory stays bounded.
fn move_document(
    mut from: AtomicFile,
    to: &mut AtomicFile,
    placed: Placed,
    path: &Path,
) -> Result<AtomicFile> {
    use std::io::{Read, Seek, SeekFrom};
    let mut source = from.read_back()?;
    let mut rest = AtomicFile::create(path)?;
    let failed = || format!("rewriting {}", path.display());
    let (start, len) = (2 * placed.offset, 2 * placed.tokens);
    std::io::copy(&mut (&mut source).take(start), rest.writer()).with_context(failed)?;
    std::io::copy(&mut (&mut source).take(len), to.writer()).with_context(failed)?;
    source.seek(SeekFrom::Start(start + len)).with_context(failed)?;
    std::io::copy(&mut source, rest.writer()).with_context(failed)?;
    Ok(rest)
}

/// Consecutive ranges of documents holding about `batch_bytes` of text each.
fn batches(documents: &[Document], batch_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (index, document) in documents.iter().enumerate() {
        size += document.text.len();
        if size >= batch_bytes {
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
