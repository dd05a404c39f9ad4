//! The text tokenizers of stage 2: GPT-2's byte-level BPE (the paper's, 50,257 tokens) and plain
//! UTF-8 bytes (257 tokens, for tests and for small experiments that need no vocabulary file).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// How text becomes token ids. Every id fits in a uint16, so token files use the nanoGPT layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokenizer {
    /// GPT-2's BPE (tiktoken's r50k_base); `<|endoftext|>` = 50256 separates documents.
    Gpt2,
    /// UTF-8 bytes as ids 0..=255, and 256 as the end-of-text token.
    Bytes,
}

const GPT2_VOCAB: u32 = 50_257;
const GPT2_EOT: u32 = 50_256;
const BYTES_EOT: u32 = 256;
const EOT_TEXT: &str = "<|endoftext|>";

/// The longest stretch of text handed to the BPE regex at once. GPT-2's pre-tokenizer regex runs in a
/// backtracking engine that fails (and tiktoken-rs then panics) on very long single matches, such as
/// a megabyte of spaces or of `^`. Cutting the text into segments bounds every match.
const MAX_SEGMENT_BYTES: usize = 64 * 1024;

impl Tokenizer {
    pub const ALL: [Tokenizer; 2] = [Tokenizer::Gpt2, Tokenizer::Bytes];

    /// Parses a tokenizer name: "gpt2" or "bytes".
    pub fn parse(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "gpt2" | "gpt-2" => Ok(Tokenizer::Gpt2),
            "bytes" => Ok(Tokenizer::Bytes),
            _ => bail!(
                "unknown tokenizer {name:?}: expected \"gpt2\" (GPT-2 BPE, 50,257 tokens) or \"bytes\" \
                 (UTF-8 bytes, 257 tokens)"
            ),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::Gpt2 => "gpt2",
            Tokenizer::Bytes => "bytes",
        }
    }

    pub fn vocab_size(&self) -> u32 {
        match self {
            Tokenizer::Gpt2 => GPT2_VOCAB,
            Tokenizer::Bytes => BYTES_EOT + 1,
        }
    }

    /// The end-of-text token that follows every document.
    pub fn eot(&self) -> u32 {
        match self {
            Tokenizer::Gpt2 => GPT2_EOT,
            Tokenizer::Bytes => BYTES_EOT,
        }
    }

    /// Encodes ordinary text: a literal "<|endoftext|>" in the text is encoded as text, never as the
    /// special token, so documents cannot forge document boundaries.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.bytes().map(u32::from).collect(),
            Tokenizer::Gpt2 => {
                let bpe = tiktoken_rs::r50k_base_singleton();
                let mut ids = Vec::with_capacity(text.len() / 3 + 1);
                for segment in bpe_segments(text) {
                    ids.extend(bpe.encode_ordinary(segment));
                }
                ids
            }
        }
    }

    /// Decodes ids to text. Where the ids split a UTF-8 character, or an id is outside the
    /// vocabulary, the result holds U+FFFD instead. The end-of-text token decodes to "<|endoftext|>".
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 2);
        match self {
            Tokenizer::Bytes => {
                for &id in ids {
                    match id {
                        0..=255 => bytes.push(id as u8),
                        BYTES_EOT => bytes.extend_from_slice(EOT_TEXT.as_bytes()),
                        _ => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
                    }
                }
            }
            Tokenizer::Gpt2 => {
                let bpe = tiktoken_rs::r50k_base_singleton();
                for &id in ids {
                    match bpe.decode_bytes(&[id]) {
                        Ok(piece) => bytes.extend_from_slice(&piece),
                        Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Splits text into segments of at most [`MAX_SEGMENT_BYTES`] whose separate encodings concatenate to
/// the encoding of the whole. Every piece GPT-2's regex matches is either all whitespace or an
/// optional space followed by non-whitespace, so a piece never spans a non-whitespace character
/// followed by a whitespace character: cutting there changes nothing. The regex's lookahead and `$`
/// only look past whitespace, and each segment but the last ends in non-whitespace. Only a stretch of
/// more than 64 KiB with no such place is cut elsewhere, at a character boundary.
fn bpe_segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= MAX_SEGMENT_BYTES {
            return Some(std::mem::take(&mut rest));
        }
        let mut window_end = MAX_SEGMENT_BYTES;
        while !rest.is_char_boundary(window_end) {
            window_end -= 1;
        }
        let window = &rest[..window_end];
        // Include the character just past the window, so a cut right at the window's end is found.
        let limit = rest[window_end..].chars().next().map_or(window_end, |c| window_end + c.len_utf8());
        let mut cut = None;
        let mut previous_is_space = true;
        for (at, c) in rest[..limit].char_indices() {
            let is_space = c.is_whitespace();
            if is_space && !previous_is_space {
                cut = Some(at);
            }
            previous_is_space = is_space;
        }
        let cut = cut.filter(|&at| at > 0).unwrap_or(window.len());
        let (segment, tail) = rest.split_at(cut);
        rest = tail;
        Some(segment)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_matches_the_reference_ids() {
        let t = Tokenizer::Gpt2;
        assert_eq!(t.encode("Hello world"), vec![15496, 995]);
        assert_eq!(t.vocab_size(), 50_257);
        assert_eq!(t.eot(), 50_256);
        assert_eq!(t.decode(&[t.eot()]), "<|endoftext|>");
        // Special tokens in the text are ordinary text.
        let forged = t.encode("a<|endoftext|>b");
        assert!(!forged.contains(&t.eot()));
        assert_eq!(t.decode(&forged), "a<|endoftext|>b");
    }

    #[test]
    fn both_tokenizers_round_trip_unicode() {
        let text = "Grüße, 世界! Ελληνικά — emoji 🦀🧬\n\ttabs\r\n  and   spaces ";
        for t in Tokenizer::ALL {
            let ids = t.encode(text);
            assert!(ids.iter().all(|&id| id < t.vocab_size() && id != t.eot()), "{t}");
            assert_eq!(t.decode(&ids), text, "{t}");
        }
        assert_eq!(Tokenizer::Bytes.encode("é"), vec![0xC3, 0xA9]);
    }

    #[test]
    fn decoding_a_split_character_is_lossy_not_fatal() {
        // The first byte of "é" alone, and ids outside either vocabulary.
        assert_eq!(Tokenizer::Bytes.decode(&[0xC3, b'x' as u32]), "\u{FFFD}x");
        assert_eq!(Tokenizer::Bytes.decode(&[999]), "\u{FFFD}");
        assert_eq!(Tokenizer::Gpt2.decode(&[70_000, 15496]), "\u{FFFD}Hello");
        let crab = Tokenizer::Gpt2.encode("🦀");
        assert!(crab.len() > 1);
        assert!(Tokenizer::Gpt2.decode(&crab[..1]).contains('\u{FFFD}'));
    }

    #[test]
    fn names_parse_back() {
        for t in Tokenizer::ALL {
            assert_eq!(Tokenizer::parse(t.name()).unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.name()));
        }
        let err = Tokenizer::parse("llama").unwrap_err().to_string();
        assert!(err.contains("gpt2") && err.contains("bytes"), "{err}");
    }

    #[test]
    fn segments_cover_the_text_and_stay_bounded() {
        let samples = [
            "word ".repeat(40_000),
            "x".repeat(200_000),
            " ".repeat(150_000) + "tail",
            "é".repeat(70_000),
            format!("{}{}", "a".repeat(MAX_SEGMENT_BYTES - 1), " b c"),
        ];
        for text in &samples {
            let segments: Vec<&str> = bpe_segments(text).collect();
            assert_eq!(segments.concat(), *text);
            assert!(segments.iter().all(|s| !s.is_empty() && s.len() <= MAX_SEGMENT_BYTES + 4));
        }
    }

    #[test]
    fn segmenting_does_not_change_gpt2_ids() {
        // Long texts with every kind of whitespace run, cut into many segments.
        let base = concat!(
            "fn main() {\n    println!(\"hi\");   \n\n\t}\r\n",
            "It's 2024 -- the year's   end.\u{00A0}\u{2003}Ünïcödé  \n\n  ",
            "x=1;y=22;z=333    \n"
        );
        let text = base.repeat(64 * 1024 / base.len() * 3);
        let bpe = tiktoken_rs::r50k_base_singleton();
        assert!(bpe_segments(&text).count() >= 3);
        assert_eq!(Tokenizer::Gpt2.encode(&text), bpe.encode_ordinary(&text));
        let trailing = format!("{}   \n  ", "ab ".repeat(30_000));
        assert_eq!(Tokenizer::Gpt2.encode(&trailing), bpe.encode_ordinary(&trailing));
    }

    #[test]
    fn pathological_runs_encode_without_failing() {
        // Unsegmented, a megabyte of whitespace before a letter overflows the regex engine's stack
        // and tiktoken-rs panics.
        for run in ["^", " ", "\n", " \n", "a", "7"] {
            let text = run.repeat(1_100_000) + "x";
            let ids = Tokenizer::Gpt2.encode(&text);
            assert_eq!(Tokenizer::Gpt2.decode(&ids), text, "{run:?}");
        }
    }
}
