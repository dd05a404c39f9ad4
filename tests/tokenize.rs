//! `ncalm tokenize` end to end: files that match their manifest, repeatable bytes, refusal to
//! overwrite, clear errors on bad input, the default corpus, and reading nanoGPT-format directories.

mod common;

use std::path::Path;

use common::{fails, ok};
use ncalm::data::corpus::{collect_documents, default_corpus_documents, list_inputs, Document};
use ncalm::data::text::{split_documents, tokenize_files, tokenize_with, TextData, TokenizeOptions};
use ncalm::data::Tokenizer;

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A folder of prose, markdown, Rust and JSON Lines, plus things tokenize must skip.
fn text_folder(root: &Path) {
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join(".hidden")).unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("story.txt"), "Once upon a time, a cellular automaton learned to speak.\n")
        .unwrap();
    std::fs::write(root.join("notes.md"), "# Notes\n\nGrüße aus Zürich — 世界 🦀\n").unwrap();
    std::fs::write(root.join("src/lib.rs"), "pub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n").unwrap();
    std::fs::write(
        root.join("records.jsonl"),
        "{\"text\": \"first record\"}\n{\"text\": \"second record\", \"id\": 2}\n\n{\"text\": \"third\"}\n",
    )
    .unwrap();
    std::fs::write(root.join("picture.png"), [0x89u8, b'P', b'N', b'G', 0xff, 0x00]).unwrap();
    std::fs::write(root.join(".hidden/secret.txt"), "hidden").unwrap();
    std::fs::write(root.join("target/build.txt"), "build output").unwrap();
}

#[test]
fn folders_and_jsonl_tokenize_with_both_tokenizers_and_repeat_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    text_folder(&input);
    for tokenizer in ["gpt2", "bytes"] {
        let (a, b) = (tmp.path().join(format!("{tokenizer}-a")), tmp.path().join(format!("{tokenizer}-b")));
        let printed =
            ok(&["tokenize", s(&input), "--out", s(&a), "--tokenizer", tokenizer, "--val-fraction", "0.3"]);
        ok(&["tokenize", s(&input), "--out", s(&b), "--tokenizer", tokenizer, "--val-fraction", "0.3"]);
        assert!(printed.contains("train.bin") && printed.contains("documents"), "{printed}");
        assert!(printed.contains("skipped 1 binary file"), "{printed}");
        for file in ["train.bin", "val.bin", "manifest.json"] {
            assert_eq!(std::fs::read(a.join(file)).unwrap(), std::fs::read(b.join(file)).unwrap(), "{file}");
        }
        let m = manifest(&a);
        let t = Tokenizer::parse(tokenizer).unwrap();
        assert_eq!(m["format"], "ncalm-text-tokens-v1");
        assert_eq!(m["tokenizer"], tokenizer);
        assert_eq!(
            (m["vocab_size"].as_u64(), m["eot"].as_u64()),
            (Some(t.vocab_size().into()), Some(t.eot().into()))
        );
        // story.txt, notes.md, src/lib.rs and three records; the picture, .hidden and target/ skipped.
        let docs = &m["documents"];
        assert_eq!(docs["train"].as_u64().unwrap() + docs["val"].as_u64().unwrap(), 6);
        assert!(docs["val"].as_u64().unwrap() >= 1 && docs["train"].as_u64().unwrap() >= 1);
        assert_eq!(m["skipped_binary_files"].as_u64(), Some(1));
        assert!(m["corpus"].is_null());
        assert_eq!(m["sources"][0].as_str(), Some(s(&input)));
        for (file, split) in [("train.bin", "train"), ("val.bin", "val")] {
            let len = std::fs::metadata(a.join(file)).unwrap().len();
            assert_eq!(len, 2 * m["tokens"][split].as_u64().unwrap(), "{file}");
        }
        let data = TextData::open(&a).unwrap();
        assert_eq!((data.tokenizer, data.vocab_size, data.eot), (Some(t), t.vocab_size(), Some(t.eot())));
        let all: Vec<u32> = data.train.iter().chain(data.val.iter()).map(|&id| u32::from(id)).collect();
        assert_eq!(all.iter().filter(|&&id| id == t.eot()).count(), 6);
        assert_eq!(*all.last().unwrap(), t.eot(), "every document ends with end-of-text");
        let text = t.decode(&all);
        for piece in ["cellular automaton", "Grüße aus Zürich — 世界 🦀", "a + b", "second record", "third"]
        {
            assert!(text.contains(piece), "{piece:?} missing from {text:?}");
        }
        assert!(!text.contains("hidden") && !text.contains("build output"));
    }
}

#[test]
fn existing_data_is_kept_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    text_folder(&input);
    let out = tmp.path().join("out");
    ok(&["tokenize", s(&input), "--out", s(&out), "--tokenizer", "bytes"]);
    let before: Vec<Vec<u8>> = ["train.bin", "val.bin", "manifest.json"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    fails(&["tokenize", s(&input), "--out", s(&out), "--tokenizer", "gpt2"], "--force");
    let after: Vec<Vec<u8>> = ["train.bin", "val.bin", "manifest.json"]
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    assert_eq!(before, after, "a refused run must leave the data set intact");
    ok(&["tokenize", s(&input), "--out", s(&out), "--tokenizer", "gpt2", "--force"]);
    assert_eq!(manifest(&out)["tokenizer"], "gpt2");
    // No temporary files are left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = s(&out);
    let binary = tmp.path().join("latin1.txt");
    std::fs::write(&binary, b"caf\xe9 au lait").unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("blank.txt"), "").unwrap();
    let jsonl = tmp.path().join("bad.jsonl");
    std::fs::write(&jsonl, "{\"text\": \"ok\"}\n{\"body\": \"no text\"}\n").unwrap();
    let story = tmp.path().join("story.txt");
    std::fs::write(&story, "a story").unwrap();

    fails(&["tokenize", "--out", o], "--default-corpus");
    fails(&["tokenize", s(&binary), "--out", o], "byte offset 3");
    fails(&["tokenize", s(&empty), "--out", o], "no text was found");
    fails(&["tokenize", s(&jsonl), "--out", o], "line 2 has no \"text\" field");
    fails(&["tokenize", s(&tmp.path().join("missing.txt")), "--out", o], "missing.txt");
    fails(&["tokenize", s(&story), "--out", o], "at least two documents");
    for bad in ["0", "0.6", "-1", "NaN"] {
        fails(&["tokenize", s(&story), "--out", o, &format!("--val-fraction={bad}")], "(0, 0.5]");
    }
    fails(&["tokenize", s(&story), "--out", o, "--tokenizer", "llama"], "unknown tokenizer");
    assert!(!out.join("manifest.json").exists() && !out.join("train.bin").exists());
}

#[test]
fn default_corpus_tokenizes_the_registry_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("corpus");
    let printed = ok(&["tokenize", "--default-corpus", "--tokenizer", "bytes", "--out", s(&out)]);
    assert!(printed.contains("generated files"), "{printed}");
    let m = manifest(&out);
    let corpus = &m["corpus"];
    assert!(corpus["packages_found"].as_u64().unwrap() > 0, "{corpus}");
    assert!(corpus["files_kept"].as_u64().unwrap() > 0, "{corpus}");
    assert!(corpus["generated_files_left_out"].as_u64().unwrap() > 0, "{corpus}");
    assert!(corpus["generated_bytes_left_out"].as_u64().unwrap() > 0, "{corpus}");
    for (file, split) in [("train.bin", "train"), ("val.bin", "val")] {
        let len = std::fs::metadata(out.join(file)).unwrap().len();
        assert!(len > 0, "{file} is empty");
        assert_eq!(len, 2 * m["tokens"][split].as_u64().unwrap(), "{file}");
    }
    // Bytes tokens: one per byte of text, plus one end-of-text per document.
    let tokens = m["tokens"]["train"].as_u64().unwrap() + m["tokens"]["val"].as_u64().unwrap();
    let bytes = m["bytes"]["train"].as_u64().unwrap() + m["bytes"]["val"].as_u64().unwrap();
    let documents = m["documents"]["train"].as_u64().unwrap() + m["documents"]["val"].as_u64().unwrap();
    assert_eq!(tokens, bytes + documents);
    assert_eq!(bytes, corpus["bytes_kept"].as_u64().unwrap());
    // Streamed, the files are those of the corpus read into memory.
    let (documents, _) = default_corpus_documents().unwrap();
    assert!(token_files(&out) == in_memory_reference(&documents, Tokenizer::Bytes, 0.05));
}

#[test]
fn nanogpt_directories_open_as_gpt2_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let write = |file: &str, ids: &[u16]| {
        let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
        std::fs::write(dir.join(file), bytes).unwrap();
    };
    write("train.bin", &[15496, 995, 50256, 15496]);
    let err = format!("{:#}", TextData::open(dir).unwrap_err());
    assert!(err.contains("no val.bin"), "{err}");
    write("val.bin", &[995, 50256]);
    let data = TextData::open(dir).unwrap();
    assert_eq!((data.vocab_size, data.tokenizer, data.eot), (50_257, Some(Tokenizer::Gpt2), Some(50_256)));
    assert_eq!((&data.train[..], &data.val[..]), (&[15496, 995, 50256, 15496][..], &[995, 50256][..]));
    assert_eq!(Tokenizer::Gpt2.decode(&[15496, 995]), "Hello world");
    write("val.bin", &[995, 50257]);
    let err = format!("{:#}", TextData::open(dir).unwrap_err());
    assert!(err.contains("val.bin") && err.contains("token 50257 at position 1"), "{err}");
    write("train.bin", &[]);
    let err = format!("{:#}", TextData::open(dir).unwrap_err());
    assert!(err.contains("train.bin is empty"), "{err}");
    std::fs::write(dir.join("train.bin"), [1u8, 2, 3]).unwrap();
    let err = format!("{:#}", TextData::open(dir).unwrap_err());
    assert!(err.contains("3 bytes, not a whole number"), "{err}");
}

/// What tokenize wrote before it streamed, spelled out: every document in memory, split by
/// `split_documents`, encoded one after another. Returns train.bin and val.bin.
fn in_memory_reference(documents: &[Document], tokenizer: Tokenizer, val_fraction: f64) -> [Vec<u8>; 2] {
    let is_val = split_documents(documents, val_fraction).unwrap();
    let [mut train, mut val] = [Vec::new(), Vec::new()];
    for (document, held_out) in documents.iter().zip(is_val) {
        let file = if held_out { &mut val } else { &mut train };
        for id in tokenizer.encode(&document.text).into_iter().chain([tokenizer.eot()]) {
            file.extend_from_slice(&u16::try_from(id).unwrap().to_le_bytes());
        }
    }
    [train, val]
}

fn token_files(dir: &Path) -> [Vec<u8>; 2] {
    ["train.bin", "val.bin"].map(|f| std::fs::read(dir.join(f)).unwrap())
}

/// A small deterministic generator (an LCG: the corpus is the same on every machine).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// A text of about `len` bytes of words, punctuation, whitespace runs and non-ASCII.
fn generated_text(rng: &mut Lcg, len: usize) -> String {
    const WORDS: [&str; 16] = [
        "the",
        "cellular",
        "automaton",
        "learned",
        "to",
        "speak",
        "Grüße",
        "世界",
        "🦀",
        "fn main() {}",
        "it's",
        "2024",
        "\"quoted\"",
        "back\\slash",
        "tab\there",
        "  spaced  ",
    ];
    const GAPS: [&str; 6] = [" ", " ", " ", "\n", ", ", ".\n\n"];
    let mut text = String::with_capacity(len + 16);
    while text.len() < len {
        text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        text.push_str(GAPS[rng.below(GAPS.len() as u64) as usize]);
    }
    text
}

/// A folder of about `bytes` of text in `shards` JSON Lines files (blank lines, CRLF, a byte-order
/// mark, empty texts, no final newline), plain files, a subfolder, and files tokenize skips.
fn generated_corpus(root: &Path, bytes: usize, shards: usize) {
    let mut rng = Lcg(16);
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for shard in 0..shards {
        let mut jsonl = if shard == 1 { "\u{FEFF}".to_string() } else { String::new() };
        while jsonl.len() < bytes / shards {
            let record = match rng.below(20) {
                0 => String::new(),
                1 => "{\"text\": \"\"}".to_string(),
                _ => {
                    let len = rng.below(4000) as usize + 1;
                    serde_json::json!({ "text": generated_text(&mut rng, len), "id": shard }).to_string()
                }
            };
            jsonl.push_str(&record);
            jsonl.push_str(if rng.below(5) == 0 { "\r\n" } else { "\n" });
        }
        if shard == 0 {
            jsonl.push_str("{\"text\": \"no final newline\"}");
        }
        std::fs::write(root.join(format!("shard-{shard:03}.jsonl")), jsonl).unwrap();
    }
    for i in 0..20 {
        let len = rng.below(3000) as usize;
        let text = generated_text(&mut rng, len);
        let bom = if i == 3 { "\u{FEFF}" } else { "" };
        std::fs::write(root.join(format!("sub/doc-{i}.txt")), format!("{bom}{text}")).unwrap();
    }
    std::fs::write(root.join("sub/empty.md"), "").unwrap();
    std::fs::write(root.join("sub/picture.png"), [0x89u8, b'P', b'N', b'G', 0xff, 0x00]).unwrap();
    // JSON Lines found in a folder that turn out binary far into the file are skipped whole.
    std::fs::write(root.join("sub/late-binary.jsonl"), b"{\"text\": \"a\"}\n{\"text\": \"caf\xe9\"}\n")
        .unwrap();
    std::fs::write(root.join("sub/nul.jsonl"), "{\"text\": \"a\"}\n\0\n").unwrap();
}

#[test]
fn streamed_tokenization_is_byte_identical_to_the_in_memory_path() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("corpus");
    generated_corpus(&input, 3 << 20, 4);
    let documents = collect_documents(std::slice::from_ref(&input)).unwrap();
    let files = list_inputs(std::slice::from_ref(&input)).unwrap();
    for tokenizer in Tokenizer::ALL {
        let expected = in_memory_reference(&documents, tokenizer, 0.1);
        // The command, in one batch of 8 MB.
        let command = tmp.path().join(format!("{tokenizer}-command"));
        let printed = ok(&[
            "tokenize",
            s(&input),
            "--out",
            s(&command),
            "--tokenizer",
            tokenizer.name(),
            "--val-fraction",
            "0.1",
        ]);
        assert!(printed.contains("skipped 3 binary files"), "{printed}");
        assert!(token_files(&command) == expected, "{tokenizer}: the command's output differs");
        // The library in batches of 64 KiB, many more than there are cores.
        let mut options = TokenizeOptions::new(tokenizer, 0.1);
        options.batch_bytes = 64 << 10;
        options.sources = vec![s(&input).to_string()];
        let batched = tmp.path().join(format!("{tokenizer}-batched"));
        let mut reports = Vec::new();
        let (streamed, skipped) =
            tokenize_files(&files, &options, &batched, &mut |p| reports.push(p)).unwrap();
        assert!(token_files(&batched) == expected, "{tokenizer}: batched output differs");
        assert_eq!(skipped.len(), 3);
        assert!(reports.len() > 40, "{} progress reports", reports.len());
        assert!(reports.windows(2).all(|w| w[0].bytes_read <= w[1].bytes_read && w[0].tokens <= w[1].tokens));
        let last = reports.last().unwrap();
        assert_eq!(last.bytes_read, last.bytes_total);
        assert_eq!(last.tokens, streamed.tokens.train + streamed.tokens.val);
        assert_eq!(last.bytes_total, files.iter().map(|f| f.bytes).sum::<u64>());
        // The manifest counts what the in-memory path counts, and the command records the same.
        let in_memory = tmp.path().join(format!("{tokenizer}-in-memory"));
        let mut in_memory_options = options.clone();
        in_memory_options.skipped_binary_files = 3;
        let manifest = tokenize_with(&documents, &in_memory_options, &in_memory, &mut |_, _| {}).unwrap();
        assert_eq!(streamed, manifest);
        assert_eq!(
            std::fs::read(command.join("manifest.json")).unwrap(),
            std::fs::read(in_memory.join("manifest.json")).unwrap()
        );
    }
}

#[test]
fn a_split_left_empty_by_the_hashes_gets_the_document_the_in_memory_path_moves() {
    let tmp = tempfile::tempdir().unwrap();
    // Records only on lines whose source hashes into the lower half: at 0.5 every one is held out,
    // so the one with the largest hash must move to train. At a tiny fraction none is held out.
    // FNV-1a's top bit barely depends on a source's last characters, so some paths put all 199 lines
    // in one half: take the first file name (in this random folder) with five lines in the lower.
    let lower_half =
        |source: &str, line: u64| ncalm::data::text::fnv1a64(&format!("{source}:{line}")) < 1 << 63;
    let (input, lines) = (0..)
        .map(|k| tmp.path().join(format!("records-{k}.jsonl")))
        .find_map(|input| {
            let source = s(&input).to_string();
            let lines: Vec<u64> = (1..200).filter(|&l| lower_half(&source, l)).take(5).collect();
            (lines.len() == 5).then_some((input, lines))
        })
        .unwrap();
    let mut jsonl = String::new();
    for line in 1..200 {
        if lines.contains(&line) {
            jsonl.push_str(&format!("{{\"text\": \"record on line {line}\"}}"));
        }
        jsonl.push('\n');
    }
    std::fs::write(&input, jsonl).unwrap();
    let documents = collect_documents(std::slice::from_ref(&input)).unwrap();
    assert_eq!(documents.len(), 5);
    let files = list_inputs(std::slice::from_ref(&input)).unwrap();
    for (fraction, case) in [(0.5, "all held out"), (1e-12, "none held out")] {
        for tokenizer in Tokenizer::ALL {
            let expected = in_memory_reference(&documents, tokenizer, fraction);
            let out = tmp.path().join(format!("{tokenizer}-{fraction}"));
            let mut options = TokenizeOptions::new(tokenizer, fraction);
            options.batch_bytes = 1;
            let (manifest, _) = tokenize_files(&files, &options, &out, &mut |_| {}).unwrap();
            assert!(token_files(&out) == expected, "{tokenizer}, {case}: output differs");
            assert_eq!(manifest.documents.train + manifest.documents.val, 5);
            assert!(manifest.documents.train >= 1 && manifest.documents.val >= 1, "{case}");
            assert_eq!(2 * manifest.tokens.train, expected[0].len() as u64);
            assert_eq!(2 * manifest.tokens.val, expected[1].len() as u64);
            let names = std::fs::read_dir(&out).unwrap().count();
            assert_eq!(names, 3, "temporary files left behind");
        }
    }
}

/// Whether two files hold the same bytes, read a chunk at a time.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let open = |p: &Path| std::io::BufReader::with_capacity(8 << 20, std::fs::File::open(p).unwrap());
    let (mut a, mut b) = (open(a), open(b));
    let (mut x, mut y) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// The scale check, a few minutes: a generated corpus of NCALM_TOKENIZE_GB gigabytes (default 2) of
/// JSON Lines shards, tokenized by the command (with NCALM_TOKENIZE_TOKENIZER, default bytes) under
/// `/usr/bin/time -v` for its peak resident memory, then by the in-memory path, byte for byte equal.
/// `cargo test --release --test tokenize -- --ignored --nocapture gigabytes`
#[test]
#[ignore = "writes and tokenizes gigabytes: run by hand"]
fn a_corpus_of_gigabytes_tokenizes_in_bounded_memory_as_in_memory() {
    let gigabytes: f64 = std::env::var("NCALM_TOKENIZE_GB").map_or(2.0, |v| v.parse().unwrap());
    let tokenizer = std::env::var("NCALM_TOKENIZE_TOKENIZER").unwrap_or_else(|_| "bytes".into());
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("corpus");
    let bytes = (gigabytes * 1e9) as usize;
    generated_corpus(&input, bytes, bytes.div_ceil(64 << 20));
    let streamed = tmp.path().join("streamed");
    let start = std::time::Instant::now();
    let run = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_ncalm"))
        .args(["tokenize", s(&input), "--out", s(&streamed), "--tokenizer", &tokenizer])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .expect("/usr/bin/time runs the command");
    let secs = start.elapsed().as_secs_f64();
    let report = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{report}");
    let peak_kb: u64 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes): "))
        .and_then(|v| v.parse().ok())
        .expect("a peak RSS line from /usr/bin/time -v");
    let m = manifest(&streamed);
    let tokens = m["tokens"]["train"].as_u64().unwrap() + m["tokens"]["val"].as_u64().unwrap();
    let text = m["bytes"]["train"].as_u64().unwrap() + m["bytes"]["val"].as_u64().unwrap();
    println!(
        "{tokenizer}: {:.2} GB of text, {tokens} tokens in {secs:.1} s ({:.1} MB/s, {:.2}M tokens/s); \
         peak RSS {:.0} MB",
        text as f64 / 1e9,
        text as f64 / 1e6 / secs,
        tokens as f64 / 1e6 / secs,
        peak_kb as f64 / 1e3
    );
    assert!(peak_kb < 512 << 10, "peak RSS {peak_kb} kB is not bounded");
    // The in-memory path on the same corpus, its documents all held.
    let t = Tokenizer::parse(&tokenizer).unwrap();
    let mut options = TokenizeOptions::new(t, 0.05);
    options.sources = vec![s(&input).to_string()];
    options.skipped_binary_files = 3;
    let in_memory = tmp.path().join("in-memory");
    let documents = collect_documents(std::slice::from_ref(&input)).unwrap();
    tokenize_with(&documents, &options, &in_memory, &mut |_, _| {}).unwrap();
    drop(documents);
    // For contrast: this process's peak, which held every document (Linux reports it).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if let Some(peak) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
        println!("the in-memory path's process peaked at {}", peak.trim());
    }
    for file in ["train.bin", "val.bin", "manifest.json"] {
        assert!(same_bytes(&streamed.join(file), &in_memory.join(file)), "{file} differs");
    }
}
