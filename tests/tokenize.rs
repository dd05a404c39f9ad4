//! `ncalm tokenize` end to end: files that match their manifest, repeatable bytes, refusal to
//! overwrite, clear errors on bad input, the default corpus, and reading nanoGPT-format directories.

mod common;

use std::path::Path;

use common::{fails, ok};
use ncalm::data::text::TextData;
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
