//! Text data for stage 2 (language pre-training after the NCA stage): gathering documents from files,
//! folders and JSON Lines, or from the Rust sources of this project's dependencies (a corpus present
//! wherever ncalm was built); tokenizing them with GPT-2 BPE or bytes; and writing and reading
//! `train.bin` / `val.bin`, flat little-endian uint16 files in the nanoGPT layout, with documents
//! joined by the end-of-text token, which training memory-maps ([`Tokens`]).
//!
//! ```text
//! collect_documents(inputs) / default_corpus()  ->  tokenize(..., out)  ->  TextData::open(out)
//! ```
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
