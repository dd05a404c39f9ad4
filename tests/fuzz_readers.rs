//! Bounded, deterministic mutation fuzzing of every reader of files and user-written strings.
//!
//! Each reader starts from the valid seed inputs under `tests/fuzz-seeds/` and is fed mutants of
//! them: flipped bits, bytes and integers overwritten with boundary values, truncations, inserted,
//! duplicated and deleted spans, JSON and TOML values spliced (numbers made huge, negative or
//! NaN-like, strings made numbers), and whole files deleted, emptied, swapped or replaced by a folder.
//! A reader must never panic, must name the file or the field at fault when it refuses an input, and
//! must leave its input directory exactly as it found it. A few mutants also go through the `ncalm`
//! binary (`stats`, `eval`), which reads the same files.
//!
//! Mutations are drawn from Philox streams keyed by (run seed, reader, iteration), so every case can be
//! replayed. `NCALM_FUZZ_ITERS` sets the iterations per reader (CI runs the default, a few seconds in
//! all) and `NCALM_FUZZ_SEED` the run seed, for longer runs that explore further. A mutant that panics
//! is written under `target/tmp/fuzz-crashes/` with a `case.txt` saying how it was found; kept under
//! `tests/fuzz-seeds/crashes/`, it is replayed by every run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::Result;
use ncalm::config::Preset;
use ncalm::data::corpus::{collect_documents, parse_jsonl};
use ncalm::data::text::{fnv1a64, TextData};
use ncalm::data::tokenizer::Tokenizer;
use ncalm::model::stage2_init::{parse_layers, Part};
use ncalm::nca::complexity::Band;
use ncalm::nca::dataset::{load_tokens, Manifest, Shard, Split};
use ncalm::nca::stats::token_stats;
use ncalm::rng::{derive_key, Stream};
use ncalm::train::checkpoint;
use ncalm::train::eval::read_u16_tokens;

/// Library iterations per reader when `NCALM_FUZZ_ITERS` is unset: the whole file then takes a few
/// seconds of a debug build, so it runs with every `cargo test`.
const DEFAULT_ITERS: u64 = 2000;

/// The binary gets one mutant per this many library iterations: a process costs far more than a call.
const CLI_SHARE: u64 = 20;

fn iterations() -> u64 {
    std::env::var("NCALM_FUZZ_ITERS").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_ITERS)
}

fn cli_iterations() -> u64 {
    iterations().div_ceil(CLI_SHARE).max(2)
}

fn run_seed() -> u64 {
    std::env::var("NCALM_FUZZ_SEED").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn seeds() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-seeds")
}

// ---------------------------------------------------------------------------------------------------
// Panics the library has been seen to raise on bad input, each waiting on a fix in the library. A
// panic matching an entry is counted as known instead of failing the run; delete the entry once the
// library is fixed, and its reproducer under tests/fuzz-seeds/crashes/ then guards the fix.

struct KnownPanic {
    reader: &'static str,
    /// The source file that panics (no line: the file is being edited).
    file: &'static str,
    message: &'static str,
    issue: &'static str,
}

// Empty: the panics found so far (layer ranges, unchecked manifest fields, histogram overflow) are fixed,
// and their reproducers under tests/fuzz-seeds/crashes/ guard the fixes.
const KNOWN_PANICS: &[KnownPanic] = &[];

/// Errors known to name neither the file at fault nor a field, each waiting on a fix in the library.
struct KnownError {
    reader: &'static str,
    message: &'static str,
    issue: &'static str,
}

const KNOWN_ERRORS: &[KnownError] = &[];

const NOT_RUN: &str = "not run: it would exhaust memory";

/// Mutants the library cannot be run on at all (memory or time exhausted before any check). None at
/// present: `ModelConfig::validate` bounds every size before a checkpoint's tensors are listed.
fn known_exhaustion(_reader: &str, _case: &Path) -> Option<&'static str> {
    None
}

// ---------------------------------------------------------------------------------------------------
// Deterministic randomness.

struct Rng(Stream);

impl Rng {
    fn new(reader: &str, iteration: u64) -> Self {
        Rng(Stream::new(derive_key(run_seed(), &[fnv1a64(reader), iteration]), 0))
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        ((u64::from(self.0.next_u32()) * n as u64) >> 32) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A position in 0..len, half the time within the first 512 bytes, where headers and the
    /// structure of most files lie.
    fn position(&mut self, len: usize) -> usize {
        if self.one_in(2) {
            self.below(len.min(512))
        } else {
            self.below(len)
        }
    }

    /// A span start..end of at most `max` bytes.
    fn span(&mut self, len: usize, max: usize) -> (usize, usize) {
        let start = self.position(len);
        let end = start + 1 + self.below(max.min(len - start));
        (start, end)
    }
}

// ---------------------------------------------------------------------------------------------------
// Mutations.

const INTERESTING_BYTES: &[u8] = b"\x00\xff\x7f\x80019\"{}[],:-.+eE\n\\ /";

const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    1 << 63,
    u64::MAX,
];

/// What a number in a JSON or TOML file becomes: boundaries of every integer width, floats out of
/// range, and the spellings of NaN and infinity some parsers accept.
const INTERESTING_NUMBERS: &[&str] = &[
    "-1",
    "0",
    "-0",
    "1",
    "2",
    "3",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "1000000000000000000",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "1.5",
    "0.0001",
    "1e308",
    "1e999",
    "-1e308",
    "5e-324",
    "NaN",
    "nan",
    "Infinity",
    "-inf",
    "inf",
];

/// What a string (or a number) becomes.
const INTERESTING_VALUES: &[&str] = &[
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "[0, 0]",
    "{\"a\": 1}",
    "\"\"",
    "\"0\"",
    "\"x\"",
    "\"../val.bin\"",
    "\"/\"",
    "\"train.bin\"",
    "\"bytes\"",
    "\"gpt2\"",
    "\"ncalm-nca-tokens-v1\"",
    "\"ncalm-text-tokens-v1\"",
    "\"F16\"",
    "\"F64\"",
    "\"U8\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
];

/// Spans of number-looking text: an optional minus, a digit, then digits, dots, exponents and signs.
fn number_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let mut j = i + usize::from(data[i] == b'-');
        let after_word = i > 0 && (data[i - 1].is_ascii_alphanumeric() || data[i - 1] == b'_');
        if j < data.len() && data[j].is_ascii_digit() && !after_word {
            while j < data.len() && (data[j].is_ascii_digit() || b".eE+-".contains(&data[j])) {
                j += 1;
            }
            spans.push((i, j));
            i = j;
        } else {
            i += 1;
        }
    }
    spans
}

/// Spans of quoted strings, quotes included (escaped quotes skipped).
fn string_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let quotes: Vec<usize> =
        (0..data.len()).filter(|&i| data[i] == b'"' && (i == 0 || data[i - 1] != b'\\')).collect();
    quotes.chunks_exact(2).map(|q| (q[0], q[1] + 1)).collect()
}

fn splice(data: &mut Vec<u8>, (start, end): (usize, usize), with: &[u8]) {
    data.splice(start..end, with.iter().copied());
}

/// Applies one to four random mutations to `data`. Half the mutants differ by one mutation only: a
/// single bad value in an otherwise valid file is what reaches the checks after parsing.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let rounds = if rng.one_in(2) { 1 } else { 2 + rng.below(3) };
    for _ in 0..rounds {
        let len = data.len();
        match rng.below(11) {
            0 if len > 0 => {
                let at = rng.position(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.position(len);
                data[at] = *rng.pick(INTERESTING_BYTES);
            }
            2 => {
                let width = *rng.pick(&[2usize, 4, 8]);
                if len >= width {
                    let at = rng.position(len - width + 1);
                    let value = rng.pick(INTERESTING_INTS).to_le_bytes();
                    data[at..at + width].copy_from_slice(&value[..width]);
                }
            }
            3 => data.truncate(rng.below(len + 1)),
            4 => {
                let at = if len == 0 { 0 } else { rng.position(len + 1).min(len) };
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.0.next_u32() as u8).collect();
                splice(data, (at, at), &bytes);
            }
            5 if len > 0 => {
                let (start, end) = rng.span(len, 64);
                let copy = data[start..end].to_vec();
                let at = rng.below(len + 1);
                for _ in 0..1 + rng.below(3) {
                    splice(data, (at, at), &copy);
                }
            }
            6 if len > 0 => {
                let span = rng.span(len, 64);
                splice(data, span, &[]);
            }
            7 | 8 => {
                let spans = number_spans(data);
                if !spans.is_empty() {
                    let span = *rng.pick(&spans);
                    let with = if rng.one_in(4) {
                        *rng.pick(INTERESTING_VALUES)
                    } else {
                        *rng.pick(INTERESTING_NUMBERS)
                    };
                    splice(data, span, with.as_bytes());
                }
            }
            9 => {
                let spans = string_spans(data);
                if !spans.is_empty() {
                    let span = *rng.pick(&spans);
                    let with = match rng.below(3) {
                        0 => rng.pick(INTERESTING_NUMBERS).to_string(),
                        1 => rng.pick(INTERESTING_VALUES).to_string(),
                        _ => format!("\"{}\"", "a".repeat(1 + rng.below(5000))),
                    };
                    splice(data, span, with.as_bytes());
                }
            }
            _ if len > 0 => {
                // A random byte anywhere: the plainest corruption.
                let at = rng.position(len);
                data[at] = rng.0.next_u32() as u8;
            }
            _ => {}
        }
    }
}

/// A directory's contents: files by relative path, `None` for folders.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn read_tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let name = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.insert(name, None);
                walk(root, &path, out);
            } else {
                out.insert(name, Some(fs::read(&path).unwrap()));
            }
        }
    }
    let mut tree = Tree::new();
    walk(root, root, &mut tree);
    tree
}

fn write_tree(root: &Path, tree: &Tree) {
    for (name, content) in tree {
        let path = root.join(name);
        match content {
            None => fs::create_dir_all(&path).unwrap(),
            Some(bytes) => {
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, bytes).unwrap();
            }
        }
    }
}

/// Mutates the files of a case: usually the bytes of one or two files, sometimes a whole file
/// deleted, emptied, replaced by a folder, or given another file's bytes.
fn mutate_tree(rng: &mut Rng, tree: &mut Tree) {
    let files: Vec<String> = tree.iter().filter(|(_, c)| c.is_some()).map(|(n, _)| n.clone()).collect();
    if files.is_empty() {
        return;
    }
    let name = rng.pick(&files).clone();
    match rng.below(40) {
        0 | 1 => {
            tree.remove(&name);
        }
        2 => {
            tree.insert(name, Some(Vec::new()));
        }
        3 => {
            tree.insert(name, None);
        }
        4 | 5 => {
            let other = rng.pick(&files).clone();
            let bytes = tree[&other].clone();
            tree.insert(name, bytes);
        }
        n => {
            mutate_file(rng, &name, tree.get_mut(&name).unwrap().as_mut().unwrap());
            if n < 10 {
                let second = rng.pick(&files).clone();
                mutate_file(rng, &second, tree.get_mut(&second).unwrap().as_mut().unwrap());
            }
        }
    }
}

/// Mutates one file: half the time, where the file holds JSON (whole, line by line, or as a
/// safetensors header), one value of the parsed document; otherwise its bytes.
fn mutate_file(rng: &mut Rng, name: &str, data: &mut Vec<u8>) {
    if rng.one_in(2) {
        let structured = if name.ends_with(".safetensors") {
            mutate_safetensors(rng, data)
        } else if name.ends_with(".jsonl") {
            mutate_jsonl(rng, data)
        } else {
            mutate_json(rng, data)
        };
        if let Some(mutant) = structured {
            *data = mutant;
            return;
        }
    }
    mutate(rng, data);
}

/// Stands for the raw text of a new value while the document is serialised.
const PLACEHOLDER: &str = "\u{1}fuzz\u{1}";

/// A step from a JSON value to one inside it.
#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn json_paths(value: &serde_json::Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    let children: Vec<(Step, &serde_json::Value)> = match value {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (Step::Key(k.clone()), v)).collect(),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().map(|(i, v)| (Step::Index(i), v)).collect()
        }
        _ => Vec::new(),
    };
    for (step, child) in children {
        path.push(step);
        out.push(path.clone());
        json_paths(child, path, out);
        path.pop();
    }
}

fn json_at<'a>(value: &'a mut serde_json::Value, path: &[Step]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Numbers near an existing one: off by one, doubled, halved, negated, pushed past 16 bits.
fn near_numbers(number: &serde_json::Number) -> Vec<String> {
    if let Some(v) = number.as_u64() {
        let v = i128::from(v);
        [v + 1, v - 1, 2 * v, v / 2, v + 65_536, -v].iter().map(i128::to_string).collect()
    } else if let Some(v) = number.as_f64() {
        [v * 2.0, v / 2.0, -v, v + 1.0, v * 1e10, v * 1e-10].iter().map(f64::to_string).collect()
    } else {
        vec!["0".into()]
    }
}

/// Replaces, removes or adds one value anywhere in a JSON document, writing the result compact or
/// pretty. None when the bytes are not JSON.
fn mutate_json(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(data).ok()?;
    let mut paths = Vec::new();
    json_paths(&doc, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        return None;
    }
    let path = rng.pick(&paths).clone();
    let (last, parent) = path.split_last().unwrap();
    let mut raw = None;
    match (rng.below(10), json_at(&mut doc, parent)) {
        // A missing field, or a missing element.
        (0, serde_json::Value::Object(map)) => {
            map.remove(match last {
                Step::Key(k) => k.as_str(),
                Step::Index(_) => unreachable!("objects have keys"),
            });
        }
        (0, serde_json::Value::Array(items)) => {
            items.remove(match last {
                Step::Index(i) => *i,
                Step::Key(_) => unreachable!("arrays have indices"),
            });
        }
        // A field nobody asked for.
        (1, serde_json::Value::Object(map)) => {
            map.insert("fuzz".into(), serde_json::Value::String(PLACEHOLDER.into()));
            raw = Some(rng.pick(INTERESTING_NUMBERS).to_string());
        }
        (_, parent) => {
            let target = json_at(parent, std::slice::from_ref(last));
            let new = match target {
                serde_json::Value::Number(n) if rng.one_in(2) => rng.pick(&near_numbers(n)).clone(),
                _ if rng.one_in(2) => rng.pick(INTERESTING_NUMBERS).to_string(),
                _ => rng.pick(INTERESTING_VALUES).to_string(),
            };
            *target = serde_json::Value::String(PLACEHOLDER.into());
            raw = Some(new);
        }
    }
    let text = if rng.one_in(2) { serde_json::to_string_pretty(&doc) } else { serde_json::to_string(&doc) };
    let text = text.unwrap();
    let placeholder = serde_json::to_string(PLACEHOLDER).unwrap();
    Some(
        match raw {
            Some(raw) => text.replace(&placeholder, &raw),
            None => text,
        }
        .into_bytes(),
    )
}

/// Mutates one line of a JSON Lines file as JSON.
fn mutate_jsonl(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let at = rng.below(lines.len());
    lines[at] = String::from_utf8(mutate_json(rng, lines[at].as_bytes())?).ok()?.replace('\n', " ");
    Some(lines.join("\n").into_bytes())
}

/// Mutates the JSON header of a safetensors file (its 8-byte length mostly kept in step), leaving
/// the tensor bytes after it as they were.
fn mutate_safetensors(rng: &mut Rng, data: &[u8]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(data.get(..8)?.try_into().unwrap());
    let end = usize::try_from(n).ok()?.checked_add(8).filter(|&e| e <= data.len())?;
    let header = mutate_json(rng, &data[8..end])?;
    let length = if rng.one_in(8) { n } else { header.len() as u64 };
    let mut out = length.to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data[end..]);
    Some(out)
}

// ---------------------------------------------------------------------------------------------------
// Running a reader and judging what it did.

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics inside a fuzz case are recorded with their location instead of printed; every other panic
/// (a failing assertion of this file) still goes to the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CAPTURING.with(Cell::get) {
                return default(info);
            }
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string payload)".into());
            let at = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            let text = format!("panicked at {}:\n{message}", at.unwrap_or_default());
            CAPTURED.with(|c| *c.borrow_mut() = Some(text));
        }));
    });
}

enum Outcome {
    Ok,
    Err(String),
    /// The panic as `panicked at FILE:LINE:COL:\nMESSAGE`.
    Panic(String),
}

fn guarded(f: impl FnOnce() -> Result<()>) -> Outcome {
    install_panic_hook();
    CAPTURING.with(|c| c.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(false));
    match result {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(e)) => Outcome::Err(format!("{e:#}")),
        Err(_) => Outcome::Panic(
            CAPTURED.with(|c| c.borrow_mut().take()).unwrap_or_else(|| "panicked in another thread".into()),
        ),
    }
}

fn known_panic(reader: &str, panic: &str) -> Option<&'static KnownPanic> {
    KNOWN_PANICS.iter().find(|k| {
        k.reader == reader && panic.contains(&format!("panicked at {}:", k.file)) && panic.contains(k.message)
    })
}

/// Tallies of one reader.
struct Report {
    reader: &'static str,
    started: Instant,
    iterations: u64,
    ok: u64,
    err: u64,
    known: BTreeMap<&'static str, u64>,
    sample_error: Option<String>,
    failures: Vec<String>,
}

impl Report {
    fn new(reader: &'static str) -> Self {
        Self {
            reader,
            started: Instant::now(),
            iterations: 0,
            ok: 0,
            err: 0,
            known: BTreeMap::new(),
            sample_error: None,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, iteration: u64, why: String, case: Option<&Tree>) {
        let mut text =
            format!("{} iteration {iteration} (NCALM_FUZZ_SEED={}): {why}", self.reader, run_seed());
        if let Some(case) = case {
            let dir = save_crash(self.reader, iteration, case, &why);
            text += &format!("\n  mutant saved in {}", dir.display());
        }
        self.failures.push(text);
    }

    /// Checks an error message: not empty, no panic, and naming one of `names` (the file's path, or a
    /// field the message is about).
    fn error(&mut self, iteration: u64, message: String, names: &[&str], case: Option<&Tree>) {
        self.err += 1;
        if message.trim().is_empty() {
            self.fail(iteration, "empty error message".into(), case);
        } else if !names.iter().any(|n| message.contains(n)) {
            match KNOWN_ERRORS.iter().find(|k| k.reader == self.reader && message.contains(k.message)) {
                Some(k) => self.known(k.issue, iteration, case, &message),
                None => self.fail(iteration, format!("error names none of {names:?}: {message}"), case),
            }
        } else if self.sample_error.is_none() {
            self.sample_error = Some(message);
        }
    }

    fn panic(&mut self, iteration: u64, panic: String, case: Option<&Tree>) {
        match known_panic(self.reader, &panic) {
            Some(k) => self.known(k.issue, iteration, case, &panic),
            None => self.fail(iteration, panic, case),
        }
    }

    /// Counts a case of a known issue, saving the first one seen as a reproducer.
    fn known(&mut self, issue: &'static str, iteration: u64, case: Option<&Tree>, what: &str) {
        let seen = self.known.entry(issue).or_default();
        if *seen == 0 {
            if let Some(case) = case {
                save_crash(self.reader, iteration, case, &format!("known: {issue}\n\n{what}"));
            }
        }
        *seen += 1;
    }

    fn finish(self) {
        let sample = self.sample_error.as_deref().unwrap_or("(none)");
        let sample: String = sample.chars().take(300).collect();
        let known: u64 = self.known.values().sum();
        println!(
            "{:<14} {:>6} iterations, {:>6} ok, {:>6} err, {known} known issues, {:.1} s\n{:<14} sample error: {sample}",
            self.reader,
            self.iterations,
            self.ok,
            self.err,
            self.started.elapsed().as_secs_f64(),
            "",
        );
        for (issue, count) in &self.known {
            println!("{:<14} known ({count}x): {issue}", "");
        }
        assert!(
            self.failures.is_empty(),
            "{}: {} failing cases:\n{}",
            self.reader,
            self.failures.len(),
            self.failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
    }
}

/// Writes a mutant under target/tmp/fuzz-crashes/READER-SEED-ITERATION/ with a case.txt saying how it
/// was found.
fn save_crash(reader: &str, iteration: u64, case: &Tree, why: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-crashes")
        .join(format!("{reader}-{}-{iteration}", run_seed()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    write_tree(&dir, case);
    let note = format!("reader {reader}\nNCALM_FUZZ_SEED {}\niteration {iteration}\n\n{why}\n", run_seed());
    fs::write(dir.join(CASE_NOTE), note).unwrap();
    dir
}

const CASE_NOTE: &str = "case.txt";

fn seed_tree(dir: &Path) -> Tree {
    let tree = read_tree(dir);
    assert!(!tree.is_empty(), "no seed files in {}", dir.display());
    tree
}

// ---------------------------------------------------------------------------------------------------
// The readers, each as a function of the directory holding one case.

/// What `ncalm stats` does with a data set: the manifest, both token files, then the statistics of
/// the training tokens (which trust the manifest's token ids).
fn read_nca(dir: &Path) -> Result<()> {
    let manifest = Manifest::load(dir)?;
    let train = load_tokens(dir, &manifest, Split::Train)?;
    let val = load_tokens(dir, &manifest, Split::Val)?;
    for (tokens, summary) in [(&train, &manifest.train), (&val, &manifest.val)] {
        assert_eq!(
            tokens.len() as u64,
            summary.tokens,
            "accepted a token count the manifest does not promise"
        );
        assert!(
            tokens.iter().all(|&t| u32::from(t) < manifest.vocab_size),
            "accepted an id out of vocabulary"
        );
    }
    token_stats(&train, manifest.vocab_size, manifest.grid_token);
    Ok(())
}

fn read_text(dir: &Path) -> Result<()> {
    let data = TextData::open(dir)?;
    for split in [&data.train, &data.val] {
        assert!(!split.is_empty(), "accepted an empty split");
        assert!(split.iter().all(|&t| u32::from(t) < data.vocab_size), "accepted an id out of vocabulary");
    }
    Ok(())
}

fn read_checkpoint(dir: &Path) -> Result<()> {
    let ck = checkpoint::load(dir)?;
    let (infos, _) = ncalm::model::params::param_infos(&ck.config);
    assert_eq!(infos.len(), ck.params.len());
    for (info, values) in infos.iter().zip(&ck.params) {
        assert_eq!(values.len(), info.shape.iter().product::<usize>(), "{} has the wrong size", info.name);
    }
    Ok(())
}

fn read_preset(dir: &Path) -> Result<()> {
    let path = dir.join("preset.toml");
    Preset::load(path.to_str().unwrap(), &[]).map(|_| ())
}

fn read_jsonl(dir: &Path) -> Result<()> {
    let path = dir.join("documents.jsonl");
    // The text as the library would see it if it came from elsewhere: parse_jsonl must cope alone.
    if let Ok(bytes) = fs::read(&path) {
        let _ = parse_jsonl("documents.jsonl", &String::from_utf8_lossy(&bytes));
    }
    let documents = collect_documents(&[path])?;
    assert!(documents.iter().all(|d| !d.text.is_empty()), "kept an empty document");
    Ok(())
}

/// Fuzzes a reader of a directory of files.
fn fuzz_directory(reader: &'static str, seeds: &[Tree], read: fn(&Path) -> Result<()>, field_names: &[&str]) {
    let mut report = Report::new(reader);
    let scratch = tempfile::tempdir().unwrap();
    for iteration in 0..iterations() {
        let mut rng = Rng::new(reader, iteration);
        let mut case = rng.pick(seeds).clone();
        mutate_tree(&mut rng, &mut case);
        let dir = scratch.path().join(iteration.to_string());
        fs::create_dir(&dir).unwrap();
        write_tree(&dir, &case);
        report.iterations += 1;
        if let Some(issue) = known_exhaustion(reader, &dir) {
            report.known(issue, iteration, Some(&case), NOT_RUN);
            fs::remove_dir_all(&dir).unwrap();
            continue;
        }
        let outcome = guarded(|| read(&dir));
        let shown = dir.display().to_string();
        let mut names = vec![shown.as_str()];
        names.extend_from_slice(field_names);
        match outcome {
            Outcome::Ok => report.ok += 1,
            Outcome::Err(message) => report.error(iteration, message, &names, Some(&case)),
            Outcome::Panic(panic) => report.panic(iteration, panic, Some(&case)),
        }
        if read_tree(&dir) != case {
            report.fail(iteration, "the reader changed its input directory".into(), Some(&case));
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    report.finish();
}

#[test]
fn seeds_are_accepted_unmutated() {
    // A fuzzer that only ever starts from rejected input explores nothing past the first check.
    let root = seeds();
    read_nca(&root.join("nca")).unwrap();
    read_text(&root.join("text")).unwrap();
    read_checkpoint(&root.join("checkpoint")).unwrap();
    read_checkpoint(&run_layout(&root.join("checkpoint")).0.path().join("run")).unwrap();
    Preset::load(root.join("preset.toml").to_str().unwrap(), &[]).unwrap();
    let documents = collect_documents(&[root.join("documents.jsonl")]).unwrap();
    assert_eq!(documents.len(), 3);
    for (parser, text) in string_seeds() {
        parse_string(&parser, &text).unwrap_or_else(|e| panic!("{parser} {text:?}: {e:#}"));
    }
}

#[test]
fn fuzz_nca_dataset() {
    fuzz_directory("nca-dataset", &[seed_tree(&seeds().join("nca"))], read_nca, &[]);
}

#[test]
fn fuzz_text_dataset() {
    fuzz_directory("text-dataset", &[seed_tree(&seeds().join("text"))], read_text, &[]);
}

/// The checkpoint seed laid out as a run directory: `run/latest` naming `run/checkpoint-00000001/`.
fn run_layout(checkpoint: &Path) -> (tempfile::TempDir, Tree) {
    let mut tree = Tree::new();
    tree.insert("latest".into(), Some(b"checkpoint-00000001".to_vec()));
    tree.insert("checkpoint-00000001".into(), None);
    for (name, content) in seed_tree(checkpoint) {
        tree.insert(format!("checkpoint-00000001/{name}"), content);
    }
    let dir = tempfile::tempdir().unwrap();
    write_tree(&dir.path().join("run"), &tree);
    (dir, tree)
}

#[test]
fn fuzz_checkpoint() {
    let direct = seed_tree(&seeds().join("checkpoint"));
    let (_dir, run) = run_layout(&seeds().join("checkpoint"));
    fuzz_directory("checkpoint", &[direct.clone(), direct.clone(), direct, run], read_checkpoint, &[]);
}

#[test]
fn fuzz_preset() {
    let mut tree = Tree::new();
    tree.insert("preset.toml".into(), Some(fs::read(seeds().join("preset.toml")).unwrap()));
    // Validation errors name the setting (train.lr, text.batch, data.grid, ...) rather than the file.
    fuzz_directory("preset", &[tree], read_preset, &["train.", "text.", "data."]);
}

#[test]
fn fuzz_jsonl() {
    let mut tree = Tree::new();
    tree.insert("documents.jsonl".into(), Some(fs::read(seeds().join("documents.jsonl")).unwrap()));
    fuzz_directory("jsonl", &[tree], read_jsonl, &[]);
}

// ---------------------------------------------------------------------------------------------------
// Strings: the parsers of command-line and preset values.

fn string_seeds() -> Vec<(String, String)> {
    fs::read_to_string(seeds().join("strings.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (parser, text) = l.split_once(' ').unwrap();
            (parser.to_string(), text.to_string())
        })
        .collect()
}

const PARSERS: &[(&str, &str)] = &[
    ("band", "complexity band"),
    ("shard", "shard"),
    ("layers", "layer"),
    ("part", "model part"),
    ("tokenizer", "tokenizer"),
];

/// Runs one parser, checking what it accepts.
fn parse_string(parser: &str, text: &str) -> Result<()> {
    match parser {
        "band" => {
            let b = Band::parse(text)?;
            assert!(0.0 <= b.lower && b.lower < b.upper && b.upper <= 1.0, "accepted band {b}");
        }
        "shard" => {
            let s = Shard::parse(text)?;
            assert!(s.index < s.count, "accepted shard {s:?}");
        }
        "layers" => {
            let r = parse_layers(text)?;
            assert!(r.start < r.end, "accepted layers {r:?}");
        }
        "part" => {
            Part::parse(text)?;
        }
        "tokenizer" => {
            Tokenizer::parse(text)?;
        }
        other => panic!("no parser {other}"),
    }
    Ok(())
}

fn read_strings(dir: &Path) -> Result<()> {
    let text = String::from_utf8_lossy(&fs::read(dir.join("input.txt"))?).into_owned();
    for (parser, _) in PARSERS {
        let _ = parse_string(parser, &text);
    }
    Ok(())
}

#[test]
fn fuzz_string_parsers() {
    let seeds = string_seeds();
    let mut report = Report::new("parsers");
    // Strings are cheap: several times the iterations of the file readers.
    for iteration in 0..iterations() * 5 {
        let mut rng = Rng::new("parsers", iteration);
        let mut bytes = rng.pick(&seeds).1.clone().into_bytes();
        mutate(&mut rng, &mut bytes);
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let case = Tree::from([("input.txt".to_string(), Some(text.clone().into_bytes()))]);
        for &(parser, field) in PARSERS {
            report.iterations += 1;
            match guarded(|| parse_string(parser, &text)) {
                Outcome::Ok => report.ok += 1,
                Outcome::Err(message) => report.error(iteration, message, &[field], Some(&case)),
                Outcome::Panic(panic) => report.panic(iteration, panic, Some(&case)),
            }
        }
    }
    report.finish();
}

#[test]
fn fuzz_tokenizer_decode() {
    // Ids come from files and from sampling: any u32 must decode, lossily, without a panic.
    let mut report = Report::new("decode");
    for iteration in 0..iterations() * 5 {
        let mut rng = Rng::new("decode", iteration);
        let ids: Vec<u32> = (0..rng.below(48))
            .map(|_| match rng.below(4) {
                0 => rng.0.next_u32(),
                1 => rng.below(300) as u32,
                2 => 50_200 + rng.below(100) as u32,
                _ => *rng.pick(INTERESTING_INTS) as u32,
            })
            .collect();
        for tokenizer in Tokenizer::ALL {
            report.iterations += 1;
            match guarded(|| {
                tokenizer.decode(&ids);
                Ok(())
            }) {
                Outcome::Ok => report.ok += 1,
                Outcome::Err(_) => unreachable!("decode cannot fail"),
                Outcome::Panic(panic) => {
                    report.fail(iteration, format!("{tokenizer} {ids:?}: {panic}"), None)
                }
            }
        }
    }
    report.finish();
}

fn read_u16(dir: &Path) -> Result<()> {
    let path = dir.join("tokens.bin");
    let tokens = read_u16_tokens(&path)?;
    let bytes = fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 2 * tokens.len(), "accepted a partial token");
    Ok(())
}

#[test]
fn fuzz_u16_token_files() {
    let mut report = Report::new("u16-tokens");
    let scratch = tempfile::tempdir().unwrap();
    for iteration in 0..iterations() {
        let mut rng = Rng::new("u16-tokens", iteration);
        // Every length up to 64 bytes, odd ones included; sometimes no file, or a folder.
        let mut case = Tree::new();
        match rng.below(20) {
            0 => {}
            1 => {
                case.insert("tokens.bin".into(), None);
            }
            _ => {
                let bytes: Vec<u8> = (0..rng.below(65)).map(|_| rng.0.next_u32() as u8).collect();
                case.insert("tokens.bin".into(), Some(bytes));
            }
        }
        let dir = scratch.path().join(iteration.to_string());
        fs::create_dir(&dir).unwrap();
        write_tree(&dir, &case);
        report.iterations += 1;
        let shown = dir.display().to_string();
        match guarded(|| read_u16(&dir)) {
            Outcome::Ok => report.ok += 1,
            Outcome::Err(message) => report.error(iteration, message, &[&shown], Some(&case)),
            Outcome::Panic(panic) => report.panic(iteration, panic, Some(&case)),
        }
        fs::remove_dir_all(&dir).unwrap();
    }
    report.finish();
}

// ---------------------------------------------------------------------------------------------------
// The binary, reading the same files.

/// A run of `ncalm`: Err(message) for a panic or a hang, else (success, stderr).
fn run_ncalm(args: &[&std::ffi::OsStr], logs: &Path) -> std::result::Result<(bool, String), String> {
    let (out, err) = (logs.join("stdout"), logs.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ncalm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("ncalm {args:?} ran for over 120 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    if status.code() == Some(101) || stderr.contains("panicked at") {
        return Err(stderr);
    }
    Ok((status.success(), stderr))
}

/// Fuzzes a command of the binary on mutants of `seed`. `args` builds the arguments from the case's
/// directory; `outputs` are files the command may write there when it succeeds.
fn fuzz_cli(
    reader: &'static str,
    seed: &Tree,
    args: fn(&Path) -> Vec<std::ffi::OsString>,
    outputs: &[&str],
    field_names: &[&str],
) {
    let mut report = Report::new(reader);
    let scratch = tempfile::tempdir().unwrap();
    for iteration in 0..cli_iterations() {
        let mut rng = Rng::new(reader, iteration);
        let mut case = seed.clone();
        mutate_tree(&mut rng, &mut case);
        let dir = scratch.path().join(iteration.to_string());
        let logs = scratch.path().join(format!("{iteration}.logs"));
        fs::create_dir(&dir).unwrap();
        fs::create_dir(&logs).unwrap();
        write_tree(&dir, &case);
        report.iterations += 1;
        if let Some(issue) = known_exhaustion(reader, &dir) {
            report.known(issue, iteration, Some(&case), NOT_RUN);
            continue;
        }
        let args = args(&dir);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let shown = dir.display().to_string();
        let mut names = vec![shown.as_str()];
        names.extend_from_slice(field_names);
        let mut after = read_tree(&dir);
        match run_ncalm(&args, &logs) {
            Err(panic) => report.panic(iteration, panic, Some(&case)),
            Ok((true, _)) => {
                report.ok += 1;
                after = read_tree(&dir);
                for output in outputs {
                    after.remove(*output);
                }
            }
            Ok((false, stderr)) => {
                let message = stderr.trim().strip_prefix("error: ").unwrap_or("");
                report.error(iteration, message.to_string(), &names, Some(&case));
                after = read_tree(&dir);
            }
        }
        if after != case {
            report.fail(iteration, "the command changed its input directory".into(), Some(&case));
        }
    }
    report.finish();
}

fn stats_args(dir: &Path) -> Vec<std::ffi::OsString> {
    vec!["stats".into(), dir.into()]
}

fn eval_args(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["eval".into(), dir.join("checkpoint").into()];
    args.extend(["--tokens".into(), dir.join("tokens.bin").into()]);
    for a in ["--seq-len", "4", "--batch", "1", "--max-sequences", "2"] {
        args.push(a.into());
    }
    args
}

/// The checkpoint seed beside a token file it can evaluate (the text seed's val.bin: byte ids).
fn eval_seed() -> Tree {
    let mut tree = Tree::from([("checkpoint".to_string(), None)]);
    for (name, content) in seed_tree(&seeds().join("checkpoint")) {
        tree.insert(format!("checkpoint/{name}"), content);
    }
    tree.insert("tokens.bin".into(), Some(fs::read(seeds().join("text/val.bin")).unwrap()));
    tree
}

#[test]
fn fuzz_stats_command() {
    fuzz_cli("stats-cli", &seed_tree(&seeds().join("nca")), stats_args, &["stats.png", "stats.json"], &[]);
}

#[test]
fn fuzz_eval_command() {
    // Token ids and lengths are checked against the model, not the file: those errors name the
    // vocabulary size or the --seq-len the model allows.
    fuzz_cli("eval-cli", &eval_seed(), eval_args, &[], &["vocabulary size", "token file", "--seq-len"]);
}

// ---------------------------------------------------------------------------------------------------
// Reproducers of panics found so far, replayed every run.

#[test]
fn crash_reproducers_do_not_panic_or_are_known() {
    let crashes = seeds().join("crashes");
    let Ok(entries) = fs::read_dir(&crashes) else { return };
    let mut dirs: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    let scratch = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for crash in dirs {
        let name = crash.file_name().unwrap().to_string_lossy().into_owned();
        let (reader, _) = name.split_once("--").expect("crash folders are named READER--WHAT");
        let mut case = read_tree(&crash);
        case.remove(CASE_NOTE);
        let dir = scratch.path().join(&name);
        fs::create_dir(&dir).unwrap();
        write_tree(&dir, &case);
        let logs = scratch.path().join(format!("{name}.logs"));
        fs::create_dir(&logs).unwrap();
        if let Some(issue) = known_exhaustion(reader, &dir) {
            println!("{name}: not run, known: {issue}");
            continue;
        }
        let panic = match reader {
            "stats-cli" | "eval-cli" => {
                let args = if reader == "stats-cli" { stats_args(&dir) } else { eval_args(&dir) };
                let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
                run_ncalm(&args, &logs).err()
            }
            _ => {
                let read: fn(&Path) -> Result<()> = match reader {
                    "nca-dataset" => read_nca,
                    "text-dataset" => read_text,
                    "checkpoint" => read_checkpoint,
                    "preset" => read_preset,
                    "jsonl" => read_jsonl,
                    "parsers" => read_strings,
                    "u16-tokens" => read_u16,
                    other => panic!("{name}: no reader {other}"),
                };
                match guarded(|| read(&dir)) {
                    Outcome::Panic(p) => Some(p),
                    _ => None,
                }
            }
        };
        match panic {
            None => println!("{name}: no longer panics (remove its entry from KNOWN_PANICS)"),
            Some(p) => match known_panic(reader, &p) {
                Some(k) => println!("{name}: still panics, known: {}", k.issue),
                None => failures.push(format!("{name}: {p}")),
            },
        }
    }
    assert!(failures.is_empty(), "reproducers panic without a known issue:\n{}", failures.join("\n"));
}
