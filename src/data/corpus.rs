//! Gathering documents for tokenization: from files and folders the user names (plain text, or JSON
//! Lines with a "text" field), or from the default corpus, the Rust sources of this project's locked
//! dependencies in the local cargo registry. That corpus needs no download: cargo fetched it to build
//! ncalm, so it is present wherever ncalm was built.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// One document: the text between two end-of-text tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Document {
    /// Where it came from: a file path, or `path:line` for a JSON Lines record. The train/val split
    /// hashes it, so it must not depend on the order of the inputs.
    pub source: String,
    pub text: String,
}

/// What [`collect`] found.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    pub documents: Vec<Document>,
    /// Files inside folders that were skipped as binary (not UTF-8, or holding NUL bytes).
    pub skipped_binary: Vec<PathBuf>,
}

/// Gathers the documents of `inputs` (see [`collect`]), dropping the list of skipped binary files.
pub fn collect_documents(inputs: &[PathBuf]) -> Result<Vec<Document>> {
    collect(inputs).map(|c| c.documents)
}

/// Gathers documents from files and folders:
/// - a `.jsonl` file gives one document per non-blank line, its "text" field;
/// - any other file is one document if it is UTF-8 text;
/// - a folder is searched recursively in sorted order, skipping hidden entries, `target/` folders
///   and links to folders, and skipping (and listing) binary files.
///
/// A file named explicitly that is not UTF-8 is an error naming the offset of its first invalid byte.
/// Empty documents are dropped; finding no text at all is an error.
pub fn collect(inputs: &[PathBuf]) -> Result<Collected> {
    let files = input_files(inputs)?;
    let read = files.par_iter().map(read_file_documents).collect::<Vec<_>>();
    let mut collected = Collected::default();
    for (file, outcome) in files.iter().zip(read) {
        match outcome? {
            FileOutcome::Documents(documents) => collected.documents.extend(documents),
            FileOutcome::Binary => collected.skipped_binary.push(file.path.clone()),
        }
    }
    if collected.documents.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        let skipped = match collected.skipped_binary.len() {
            0 => String::new(),
            n => format!(" ({n} binary files skipped)"),
        };
        bail!("no text was found in the inputs {}{skipped}", names.join(", "));
    }
    Ok(collected)
}

struct FileInput {
    path: PathBuf,
    /// Named on the command line rather than found in a folder: then it must be text.
    named: bool,
}

/// The files named in `inputs`, and those in the folders named there (see [`collect`]), in order.
fn input_files(inputs: &[PathBuf]) -> Result<Vec<FileInput>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = fs::metadata(input).with_context(|| format!("cannot read input {}", input.display()))?;
        if meta.is_dir() {
            list_files(input, &mut files, &|_| true)?;
        } else {
            files.push(FileInput { path: input.clone(), named: true });
        }
    }
    Ok(files)
}

enum FileOutcome {
    Documents(Vec<Document>),
    Binary,
}

/// Appends the files under `dir` that `keep` accepts, recursively, in sorted order.
fn list_files(dir: &Path, out: &mut Vec<FileInput>, keep: &dyn Fn(&Path) -> bool) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().with_context(|| format!("cannot inspect {}", path.display()))?;
        // Links are followed to files only: a link to a folder could loop.
        let is_dir = kind.is_dir();
        let is_file = kind.is_file() || (kind.is_symlink() && path.is_file());
        if is_dir && name != "target" {
            list_files(&path, out, keep)?;
        } else if is_file && keep(&path) {
            out.push(FileInput { path, named: false });
        }
    }
    Ok(())
}

fn is_jsonl(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
}

fn read_file_documents(file: &FileInput) -> Result<FileOutcome> {
    let path = &file.path;
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Some(text) = decode_text(path, bytes, file.named)? else {
        return Ok(FileOutcome::Binary);
    };
    let text = text.strip_prefix('\u{FEFF}').map(str::to_string).unwrap_or(text);
    let source = path.display().to_string();
    if is_jsonl(path) {
        return Ok(FileOutcome::Documents(parse_jsonl(&source, &text)?));
    }
    let documents = if text.is_empty() { vec![] } else { vec![Document { source, text }] };
    Ok(FileOutcome::Documents(documents))
}

/// The bytes of a file as text; None for a binary file found in a folder (not UTF-8, or holding NUL
/// bytes). A file the user named must be UTF-8: the error names the first invalid byte and its offset.
fn decode_text(path: &Path, bytes: Vec<u8>, named: bool) -> Result<Option<String>> {
    match String::from_utf8(bytes) {
        Ok(text) if named || !text.contains('\0') => Ok(Some(text)),
        Ok(_) => Ok(None),
        Err(_) if !named => Ok(None),
        Err(e) => Err(utf8_error(path, e.as_bytes(), 0, e.utf8_error())),
    }
}

/// Says where `bytes`, read from `path` at byte `offset`, stop being UTF-8.
fn utf8_error(path: &Path, bytes: &[u8], offset: u64, e: std::str::Utf8Error) -> anyhow::Error {
    anyhow::anyhow!(
        "{} is not UTF-8 text: invalid byte 0x{:02x} at byte offset {}",
        path.display(),
        bytes[e.valid_up_to()],
        offset + e.valid_up_to() as u64
    )
}

/// One document per non-blank line, from its "text" field. Errors name the file and the line.
pub fn parse_jsonl(source: &str, content: &str) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for (index, line) in content.lines().enumerate() {
        documents.extend(parse_jsonl_line(source, index + 1, line)?);
    }
    Ok(documents)
}

/// The document of one line of a JSON Lines file, None for a blank line or an empty text.
fn parse_jsonl_line(source: &str, line_number: usize, line: &str) -> Result<Option<Document>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("{source}: line {line_number} is not valid JSON"))?;
    let Some(record) = value.as_object() else {
        bail!("{source}: line {line_number} is not a JSON object with a \"text\" field");
    };
    let text = match record.get("text") {
        Some(serde_json::Value::String(text)) => text,
        Some(other) => {
            bail!("{source}: line {line_number}: \"text\" must be a string, found {}", json_kind(other))
        }
        None => bail!("{source}: line {line_number} has no \"text\" field"),
    };
    Ok((!text.is_empty()).then(|| Document { source: format!("{source}:{line_number}"), text: text.clone() }))
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The lock file this binary was built from: its registry packages are the default corpus.
const CARGO_LOCK: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock"));

/// Files above this size are left out of the default corpus: in a crate's sources they are almost
/// always generated tables or bindings (windows-sys, unicode tables), not code people wrote.
pub const MAX_CORPUS_FILE_BYTES: u64 = 100 * 1024;

/// A file whose first lines say one of these (in any case) is generated and left out.
const GENERATED_MARKERS: [&str; 5] =
    ["@generated", "do not edit", "automatically generated", "auto-generated", "generated by"];
const GENERATED_MARKER_LINES: usize = 30;

/// What the default corpus holds and what it left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusSummary {
    pub description: String,
    /// The registry source folders searched (`$CARGO_HOME/registry/src/*`).
    pub registry: Vec<String>,
    /// Registry packages in the lock file.
    pub packages_locked: u64,
    pub packages_found: u64,
    /// `name-version` of the locked packages the registry lacks.
    pub packages_missing: Vec<String>,
    pub files_kept: u64,
    pub bytes_kept: u64,
    /// Files left out as generated, by their size or by a marker in their first lines.
    pub generated_files_left_out: u64,
    pub generated_bytes_left_out: u64,
    /// Of those, the files left out for their size alone.
    pub large_files_left_out: u64,
    /// Files that are not UTF-8 (test fixtures, mostly).
    pub non_utf8_files_left_out: u64,
}

impl CorpusSummary {
    /// The share of the Rust source bytes left out as generated.
    pub fn generated_share(&self) -> f64 {
        let total = self.bytes_kept + self.generated_bytes_left_out;
        if total == 0 {
            0.0
        } else {
            self.generated_bytes_left_out as f64 / total as f64
        }
    }
}

#[derive(Deserialize)]
struct LockFile {
    #[serde(default)]
    package: Vec<LockedPackage>,
}

#[derive(Deserialize)]
struct LockedPackage {
    name: String,
    version: String,
    source: Option<String>,
}

/// `name-version` of every registry package in `lock` (path and git packages are not in the
/// registry), in lock-file order, without repeats.
fn registry_packages(lock: &str) -> Result<Vec<String>> {
    let lock: LockFile = toml::from_str(lock).context("cannot parse the embedded Cargo.lock")?;
    let mut seen = HashSet::new();
    Ok(lock
        .package
        .into_iter()
        .filter(|p| {
            p.source.as_deref().is_some_and(|s| s.starts_with("registry+") || s.starts_with("sparse+"))
        })
        .map(|p| format!("{}-{}", p.name, p.version))
        .filter(|id| seen.insert(id.clone()))
        .collect())
}

/// `$CARGO_HOME`, or `~/.cargo` where it is unset.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home));
    }
    let user_home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .context("cannot find the cargo registry: neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(user_home).join(".cargo"))
}

/// Whether the first lines of a source file mark it as generated.
pub fn looks_generated(text: &str) -> bool {
    text.lines().take(GENERATED_MARKER_LINES).any(|line| {
        let line = line.to_lowercase();
        GENERATED_MARKERS.iter().any(|marker| line.contains(marker))
    })
}

/// What became of one candidate file of the default corpus.
enum CorpusFile {
    Kept(u64),
    Large(u64),
    Generated(u64),
    NotUtf8,
}

fn classify_corpus_file(path: &Path) -> Result<CorpusFile> {
    let size = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if size > MAX_CORPUS_FILE_BYTES {
        return Ok(CorpusFile::Large(size));
    }
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Ok(CorpusFile::NotUtf8);
    };
    Ok(if looks_generated(text) { CorpusFile::Generated(size) } else { CorpusFile::Kept(size) })
}

/// The default corpus: the `*.rs` files of this project's locked registry dependencies, found in
/// `$CARGO_HOME/registry/src/*/NAME-VERSION/`, in lock-file order and sorted within each package,
/// leaving out generated files (over [`MAX_CORPUS_FILE_BYTES`], or marked in their first 30 lines)
/// and files that are not UTF-8.
pub fn default_corpus() -> Result<(Vec<PathBuf>, CorpusSummary)> {
    let packages = registry_packages(CARGO_LOCK)?;
    let registry_root = cargo_home()?.join("registry").join("src");
    let mut index_dirs: Vec<PathBuf> = match fs::read_dir(&registry_root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect(),
        Err(_) => Vec::new(),
    };
    index_dirs.sort();
    let mut summary = CorpusSummary {
        description: "Rust sources (*.rs) of ncalm's locked dependencies in the local cargo registry"
            .to_string(),
        registry: index_dirs.iter().map(|d| d.display().to_string()).collect(),
        packages_locked: packages.len() as u64,
        ..Default::default()
    };
    let mut candidates = Vec::new();
    for package in &packages {
        match index_dirs.iter().map(|d| d.join(package)).find(|d| d.is_dir()) {
            Some(dir) => {
                summary.packages_found += 1;
                list_files(&dir, &mut candidates, &|p| p.extension().is_some_and(|e| e == "rs"))?;
            }
            None => summary.packages_missing.push(package.clone()),
        }
    }
    if summary.packages_found == 0 {
        bail!(
            "the default corpus is the Rust sources of ncalm's {} locked dependencies in the cargo \
             registry, but none of them is in {} (set CARGO_HOME if cargo keeps its files elsewhere). \
             They exist wherever ncalm was built with cargo; `cargo fetch` in the ncalm source tree \
             downloads them.",
            packages.len(),
            registry_root.display()
        );
    }
    let classified = candidates.par_iter().map(|f| classify_corpus_file(&f.path)).collect::<Vec<_>>();
    let mut kept = Vec::new();
    for (file, outcome) in candidates.into_iter().zip(classified) {
        match outcome? {
            CorpusFile::Kept(size) => {
                summary.files_kept += 1;
                summary.bytes_kept += size;
                kept.push(file.path);
            }
            CorpusFile::Large(size) | CorpusFile::Generated(size) => {
                summary.generated_files_left_out += 1;
                summary.generated_bytes_left_out += size;
                if size > MAX_CORPUS_FILE_BYTES {
                    summary.large_files_left_out += 1;
                }
            }
            CorpusFile::NotUtf8 => summary.non_utf8_files_left_out += 1,
        }
    }
    if kept.is_empty() {
        bail!(
            "the cargo registry under {} holds no usable Rust sources of ncalm's dependencies",
            registry_root.display()
        );
    }
    Ok((kept, summary))
}

/// The default corpus as documents. Their sources are `NAME-VERSION/path/in/package.rs`, without the
/// registry folder, so the train/val split is the same on every machine.
pub fn default_corpus_documents() -> Result<(Vec<Document>, CorpusSummary)> {
    let (paths, summary) = default_corpus()?;
    let registry: Vec<PathBuf> = summary.registry.iter().map(PathBuf::from).collect();
    let read_document = |path: &PathBuf| -> Result<Document> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Document { source: registry_source(&registry, path), text })
    };
    let read: Vec<_> = paths.par_iter().map(read_document).collect();
    let documents: Vec<Document> =
        read.into_iter().filter(|d| !d.as_ref().is_ok_and(|d| d.text.is_empty())).collect::<Result<_>>()?;
    Ok((documents, summary))
}

/// A default-corpus file's source: `NAME-VERSION/path/in/package.rs`, the same on every machine.
fn registry_source(registry: &[PathBuf], path: &Path) -> String {
    let relative = registry.iter().find_map(|root| path.strip_prefix(root).ok()).unwrap_or(path);
    relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// A file to stream documents from (see [`read_documents`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    /// What its documents are called (the train/val split hashes it): the path as found, or inside
    /// the registry for the default corpus.
    pub source: String,
    /// Named by the user, so it must be text; a binary file found in a folder is skipped.
    pub named: bool,
    /// Drop a byte-order mark at its start (the default corpus keeps its files verbatim).
    pub strip_bom: bool,
    /// Its size when listed, for the progress report.
    pub bytes: u64,
}

/// The files of `inputs` in the order [`collect`] reads them, without reading them.
pub fn list_inputs(inputs: &[PathBuf]) -> Result<Vec<InputFile>> {
    input_files(inputs)?
        .into_iter()
        .map(|f| {
            let meta = fs::metadata(&f.path).with_context(|| format!("cannot read {}", f.path.display()))?;
            let source = f.path.display().to_string();
            Ok(InputFile { path: f.path, source, named: f.named, strip_bom: true, bytes: meta.len() })
        })
        .collect()
}

/// The default corpus (see [`default_corpus`]) as files to stream, named as
/// [`default_corpus_documents`] names them.
pub fn default_corpus_inputs() -> Result<(Vec<InputFile>, CorpusSummary)> {
    let (paths, summary) = default_corpus()?;
    let registry: Vec<PathBuf> = summary.registry.iter().map(PathBuf::from).collect();
    let files = paths
        .into_iter()
        .map(|path| {
            let meta = fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let source = registry_source(&registry, &path);
            Ok(InputFile { path, source, named: true, strip_bom: false, bytes: meta.len() })
        })
        .collect::<Result<_>>()?;
    Ok((files, summary))
}

/// What [`read_documents`] read.
#[derive(Clone, Debug, Default)]
pub struct ReadSummary {
    pub documents: u64,
    /// Files found in folders and skipped as binary.
    pub skipped_binary: Vec<PathBuf>,
}

/// Reads the documents of `files` in order, as [`collect`] does, but without holding them: they are
/// handed to `send` in batches of about `batch_bytes` of text, with the input bytes read so far, and
/// `send` returns false to stop. JSON Lines are read a line at a time, so memory holds one batch and
/// one document, whatever the size of the files. A JSON Lines file found in a folder is checked to be
/// text in a first pass: none of its documents may be sent before it could turn out to be binary.
pub fn read_documents(
    files: &[InputFile],
    batch_bytes: usize,
    send: &mut dyn FnMut(Vec<Document>, u64) -> bool,
) -> Result<ReadSummary> {
    let mut summary = ReadSummary::default();
    let (mut batch, mut batch_text, mut read) = (Vec::new(), 0, 0);
    for file in files {
        let path = &file.path;
        // Each file as its documents (None: a blank line, an empty text) and the bytes each took.
        let documents: Box<dyn Iterator<Item = Result<(Option<Document>, u64)>>> = if is_jsonl(path) {
            if !file.named && !is_text_file(path)? {
                summary.skipped_binary.push(path.clone());
                read += file.bytes;
                continue;
            }
            Box::new(JsonLines::open(file)?)
        } else {
            let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let size = bytes.len() as u64;
            let Some(mut text) = decode_text(path, bytes, file.named)? else {
                summary.skipped_binary.push(path.clone());
                read += size;
                continue;
            };
            if file.strip_bom && text.starts_with('\u{FEFF}') {
                text.drain(..'\u{FEFF}'.len_utf8());
            }
            let document = (!text.is_empty()).then(|| Document { source: file.source.clone(), text });
            Box::new(std::iter::once(Ok((document, size))))
        };
        for next in documents {
            let (document, bytes) = next?;
            read += bytes;
            let Some(document) = document else { continue };
            batch_text += document.text.len();
            batch.push(document);
            summary.documents += 1;
            if batch_text >= batch_bytes {
                batch_text = 0;
                if !send(std::mem::take(&mut batch), read) {
                    return Ok(summary);
                }
            }
        }
    }
    send(batch, read);
    Ok(summary)
}

/// The lines of a JSON Lines file as they are read, each as its document and its length in bytes.
struct JsonLines {
    path: PathBuf,
    source: String,
    strip_bom: bool,
    reader: BufReader<File>,
    line: Vec<u8>,
    number: usize,
    /// Where the line being read starts in the file, for the UTF-8 error.
    offset: u64,
}

impl JsonLines {
    fn open(file: &InputFile) -> Result<Self> {
        let path = &file.path;
        let reader = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            path: path.clone(),
            source: file.source.clone(),
            strip_bom: file.strip_bom,
            reader: BufReader::with_capacity(1 << 20, reader),
            line: Vec::new(),
            number: 0,
            offset: 0,
        })
    }

    /// The document of the line just read, as [`parse_jsonl`] finds it: lines end at `\n`, and a
    /// `\r` before it is dropped.
    fn document(&mut self) -> Result<(Option<Document>, u64)> {
        let (bytes, start) = (self.line.len() as u64, self.offset);
        self.offset += bytes;
        self.number += 1;
        let mut line =
            std::str::from_utf8(&self.line).map_err(|e| utf8_error(&self.path, &self.line, start, e))?;
        if let Some(without_newline) = line.strip_suffix('\n') {
            line = without_newline.strip_suffix('\r').unwrap_or(without_newline);
        }
        if self.number == 1 && self.strip_bom {
            line = line.strip_prefix('\u{FEFF}').unwrap_or(line);
        }
        Ok((parse_jsonl_line(&self.source, self.number, line)?, bytes))
    }
}

impl Iterator for JsonLines {
    type Item = Result<(Option<Document>, u64)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(0) => None,
            Ok(_) => Some(self.document()),
            Err(e) => Some(Err(e).with_context(|| format!("cannot read {}", self.path.display()))),
        }
    }
}

/// Whether a file is text, UTF-8 without NUL bytes, read a line at a time (a line never splits a
/// UTF-8 character).
fn is_text_file(path: &Path) -> Result<bool> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read =
            reader.read_until(b'\n', &mut line).with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            return Ok(true);
        }
        if line.contains(&0) || std::str::from_utf8(&line).is_err() {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_are_recognised_by_their_first_lines() {
        assert!(looks_generated("// @generated by build.rs\nfn a() {}"));
        assert!(looks_generated("//! THIS FILE IS AUTOMATICALLY GENERATED\n"));
        assert!(looks_generated("/* Auto-generated bindings */"));
        assert!(looks_generated("// Code Generated By bindgen 0.69"));
        assert!(looks_generated(&format!("{}// DO NOT EDIT\n", "\n".repeat(29))));
        // Below the first 30 lines, or merely talking about generation, it is ordinary code.
        assert!(!looks_generated(&format!("{}// do not edit\n", "\n".repeat(30))));
        assert!(!looks_generated("/// Generates a random rule.\nfn generate() {}"));
    }

    #[test]
    fn jsonl_gives_one_document_per_line_and_names_bad_lines() {
        let docs = parse_jsonl("d.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\", \"id\": 3}\r\n").unwrap();
        let sources: Vec<&str> = docs.iter().map(|d| d.source.as_str()).collect();
        assert_eq!(sources, ["d.jsonl:1", "d.jsonl:3"]);
        assert_eq!(docs[1].text, "b");
        let cases = [
            ("{\"text\": \"a\"}\n{\"text\": ", "d.jsonl: line 2 is not valid JSON"),
            ("{\"body\": \"a\"}", "d.jsonl: line 1 has no \"text\" field"),
            ("{\"text\": 5}", "\"text\" must be a string, found a number"),
            ("[1, 2]", "line 1 is not a JSON object"),
        ];
        for (content, expect) in cases {
            let err = format!("{:#}", parse_jsonl("d.jsonl", content).unwrap_err());
            assert!(err.contains(expect), "{err}");
        }
    }

    #[test]
    fn folders_are_read_in_order_and_binary_files_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(root.join("target")).unwrap();
        fs::create_dir_all(root.join(".git")).unwrap();
        fs::write(root.join("b.txt"), "bee").unwrap();
        fs::write(root.join("sub/a.md"), "\u{FEFF}# a").unwrap();
        fs::write(root.join("empty.txt"), "").unwrap();
        fs::write(root.join("blob.bin"), [0xffu8, 0x00, 0x12]).unwrap();
        fs::write(root.join("zeros.dat"), [0u8; 8]).unwrap();
        fs::write(root.join("target/skip.txt"), "no").unwrap();
        fs::write(root.join(".git/skip.txt"), "no").unwrap();
        fs::write(root.join("d.jsonl"), "{\"text\":\"one\"}\n{\"text\":\"two\"}\n").unwrap();
        let got = collect(&[root.to_path_buf()]).unwrap();
        let texts: Vec<&str> = got.documents.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["bee", "one", "two", "# a"]);
        assert_eq!(got.skipped_binary.len(), 2);
        // Named explicitly, a binary file is an error naming the first bad byte.
        let err = format!("{:#}", collect(&[root.join("blob.bin")]).unwrap_err());
        assert!(err.contains("blob.bin") && err.contains("byte offset 0"), "{err}");
        let err = format!("{:#}", collect(&[root.join("empty.txt")]).unwrap_err());
        assert!(err.contains("no text was found"), "{err}");
    }

    #[test]
    fn the_embedded_lock_lists_registry_packages() {
        let packages = registry_packages(CARGO_LOCK).unwrap();
        assert!(packages.iter().any(|p| p.starts_with("serde-1.")), "{packages:?}");
        assert!(!packages.iter().any(|p| p.starts_with("ncalm-")));
    }
}
