//! Text data for stage 2 (language pre-training after the NCA stage): gathering documents from files,
//! folders and JSON Lines, or from the Rust sources of this project's dependencies (a corpus present
//! wherever ncalm was built); tokenizing them with GPT-2 BPE or bytes; and writing and reading
//! `train.bin` / `val.bin`, flat little-endian uint16 files in the nanoGPT layout, with documents
//! joined by the end-of-text token, which training memory-maps ([`Tokens`]).
//!
//! ```text
//! list_inputs(inputs) / default_corpus_inputs()  ->  tokenize_files(..., out)  ->  TextData::open(out)
//! collect_documents(inputs) / default_corpus()    ->  tokenize(..., out)        (documents in memory)
//! ```
//!
//! `tokenize_files` streams: it reads, encodes on all cores and writes a batch at a time, so its
//! memory is bounded whatever the size of the corpus, and its output is byte-identical to `tokenize`.
//!
//! The Dyck-k bracket sequences of the stage-1 baseline are generated here too ([`Dyck`]).

pub mod corpus;
pub mod dyck;
pub mod text;
pub mod tokenizer;
pub mod tokens;

pub use corpus::{collect_documents, default_corpus, CorpusSummary, Document};
pub use dyck::Dyck;
pub use text::{tokenize, TextData, TextManifest};
pub use tokenizer::Tokenizer;
pub use tokens::Tokens;
