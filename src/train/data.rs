//! Stage-1 sequences for the trainer: NCA simulated on the GPU for every micro-batch (no disk), or
//! the token files `ncalm generate` writes. Either way the position in the data is a function of the
//! step, so a resumed run reads exactly what the uninterrupted one would have.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

use crate::config::DataConfig;
use crate::data::{Dyck, Tokens};
use crate::gpu::{Gpu, GpuTensor, Recorder};
use crate::nca::complexity::Band;
use crate::nca::dataset::{
    load_tokens, search_rules, sequence_key, AcceptedRule, Manifest, SearchSettings, Split,
};
use crate::nca::gpu::GpuSimulator;
use crate::nca::{NcaSpec, Recording, Rule, SimRequest, TokenLayout};
use crate::ops::tokens;
use crate::rng::{derive_key, Stream};

/// A permutation of 0..n drawn from (seed, epoch): the order sequences are read in that epoch.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut s = Stream::new(derive_key(seed, &[0x0dd, epoch]), 0);
    for i in (1..n).rev() {
        let j = ((u64::from(s.next_u32()) * (i as u64 + 1)) >> 32) as usize;
        order.swap(i, j);
    }
    order
}

/// How stored sequences map onto model inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceLayout {
    /// Stored tokens per sequence (at least seq_len + 1).
    pub stride: u32,
    /// Targets before this position are not trained on (the first NCA frame).
    pub masked: u32,
    pub frame_len: u32,
    pub states: u32,
    pub vocab: u32,
}

/// Held-out sequences for evaluation, on the host.
pub struct ValidationSet {
    pub tokens: Vec<u32>,
    pub count: usize,
}

/// Where training micro-batches come from.
pub enum SequenceSource {
    Nca(Box<NcaStream>),
    Files(FileStream),
    Host(HostStream),
}

impl SequenceSource {
    pub fn layout(&self) -> SequenceLayout {
        match self {
            SequenceSource::Nca(s) => s.layout,
            SequenceSource::Files(f) => f.layout,
            SequenceSource::Host(h) => h.layout,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SequenceSource::Nca(s) => {
                format!("NCA on the GPU: {} training rules, band {}", s.rules.len(), s.band)
            }
            SequenceSource::Files(f) => format!("{} sequences from {}", f.count, f.dir),
            SequenceSource::Host(h) => h.label.clone(),
        }
    }

    /// Records filling `ids`/`targets` with `sequences` sequences starting at global sequence `first`.
    #[allow(clippy::too_many_arguments)]
    pub fn fill(
        &mut self,
        rec: &mut Recorder,
        staging: &GpuTensor,
        ids: &GpuTensor,
        targets: &GpuTensor,
        first: u64,
        sequences: u32,
        seq_len: u32,
    ) -> Result<()> {
        let layout = self.layout();
        match self {
            SequenceSource::Nca(s) => s.encode(rec, staging, first, sequences)?,
            SequenceSource::Files(f) => f.upload(rec.gpu(), staging, first, sequences)?,
            SequenceSource::Host(h) => {
                let host: Vec<u32> =
                    (first..first + u64::from(sequences)).flat_map(|g| h.sequence(g)).collect();
                rec.gpu().write(&staging.slice(0, host.len()), &host);
            }
        }
        tokens::prepare(rec, staging, ids, targets, sequences, seq_len, layout.stride, layout.masked)
    }

    pub fn validation(&self) -> &ValidationSet {
        match self {
            SequenceSource::Nca(s) => &s.validation,
            SequenceSource::Files(f) => &f.validation,
            SequenceSource::Host(h) => &h.validation,
        }
    }
}

/// Sequences built on the host: blocks of a text corpus, or Dyck-k bracket sequences.
pub struct HostStream {
    label: String,
    kind: HostKind,
    seed: u64,
    stride: usize,
    pub layout: SequenceLayout,
    pub validation: ValidationSet,
}

enum HostKind {
    /// Consecutive blocks of a token stream: block k covers tokens [k L, k L + L + 1), so every token is
    /// a target once per epoch; blocks are shuffled per epoch.
    Text {
        tokens: Tokens,
        blocks: u64,
        order: std::cell::RefCell<(u64, Vec<u32>)>,
    },
    Dyck(Dyck),
}

impl HostStream {
    fn new(
        label: String,
        kind: HostKind,
        seed: u64,
        seq_len: u32,
        vocab: u32,
        validation: Vec<u32>,
        val_count: usize,
    ) -> Self {
        let stride = seq_len as usize + 1;
        let layout = SequenceLayout { stride: stride as u32, masked: 0, frame_len: 0, states: 0, vocab };
        Self {
            label,
            kind,
            seed,
            stride,
            layout,
            validation: ValidationSet { tokens: validation, count: val_count },
        }
    }

    /// Training on a token stream (e.g. `train.bin` of `ncalm tokenize`, mapped: the stream keeps a
    /// handle on the mapping, no copy), validating on `val`.
    pub fn text(
        label: &str,
        train: Tokens,
        val: &Tokens,
        vocab: u32,
        seq_len: u32,
        seed: u64,
        val_sequences: usize,
    ) -> Result<Self> {
        let l = seq_len as usize;
        let blocks = (train.len().saturating_sub(1) / l) as u64;
        ensure!(blocks > 0, "{label}: {} training tokens do not fill one block of {}", train.len(), l + 1);
        // An epoch's order is a permutation of u32 block indices; offsets into the tokens are 64-bit.
        ensure!(
            blocks <= u64::from(u32::MAX),
            "{label}: {blocks} blocks of {seq_len} tokens are more than one epoch's order can index; use a \
             longer context"
        );
        let val_blocks = (val.len().saturating_sub(1) / l).min(val_sequences);
        ensure!(
            val_blocks > 0,
            "{label}: {} validation tokens do not fill one block of {}",
            val.len(),
            l + 1
        );
        for (split, tokens) in [("training", &train), ("validation", val)] {
            if let Some(at) = tokens.first_at_or_above(vocab) {
                bail!(
                    "{label}: {split} token {} at position {at} is not below the vocabulary size {vocab}",
                    tokens[at]
                );
            }
        }
        let validation: Vec<u32> =
            (0..val_blocks).flat_map(|k| val[k * l..k * l + l + 1].iter().map(|&t| u32::from(t))).collect();
        let order = std::cell::RefCell::new((0, epoch_order(blocks as usize, seed, 0)));
        let label = format!("{label}: {blocks} blocks of {seq_len} tokens");
        Ok(Self::new(
            label,
            HostKind::Text { tokens: train, blocks, order },
            seed,
            seq_len,
            vocab,
            validation,
            val_blocks,
        ))
    }

    /// Dyck-k sequences generated from `seed` (validation from a disjoint stream).
    pub fn dyck(dyck: Dyck, seq_len: u32, seed: u64, val_sequences: usize) -> Self {
        let stride = seq_len as usize + 1;
        let validation = (0..val_sequences as u64)
            .flat_map(|i| dyck.sequence(derive_key(seed, &[0xd7c, 1, i]), stride))
            .collect();
        let label =
            format!("Dyck-{} sequences, depth 1..={}, P(open) {}", dyck.kinds, dyck.max_depth, dyck.p_open);
        Self::new(label, HostKind::Dyck(dyck), seed, seq_len, dyck.vocab(), validation, val_sequences)
    }

    /// Global sequence `g` (epoch-shuffled for text).
    fn sequence(&self, g: u64) -> Vec<u32> {
        match &self.kind {
            HostKind::Dyck(d) => d.sequence(derive_key(self.seed, &[0xd7c, 0, g]), self.stride),
            HostKind::Text { tokens, blocks, order } => {
                let epoch = g / blocks;
                let mut o = order.borrow_mut();
                if o.0 != epoch {
                    *o = (epoch, epoch_order(*blocks as usize, self.seed, epoch));
                }
                let start = o.1[(g % blocks) as usize] as usize * (self.stride - 1);
                tokens[start..start + self.stride].iter().map(|&t| u32::from(t)).collect()
            }
        }
    }
}

/// NCA sequences simulated on the fly from a fixed set of training rules (or rules redrawn each epoch).
pub struct NcaStream {
    sim: GpuSimulator,
    spec: NcaSpec,
    seed: u64,
    band: Band,
    redraw: bool,
    rules: Vec<AcceptedRule>,
    rule_buffer: wgpu::Buffer,
    rules_epoch: u64,
    order: (u64, Vec<u32>),
    rule_count: u64,
    pub layout: SequenceLayout,
    pub validation: ValidationSet,
}

impl NcaStream {
    /// Searches the training and validation rules (`data.rules`, `data.val_rules` of the band) and
    /// simulates `val_sequences` held-out sequences.
    pub fn new(
        gpu: &Gpu,
        data: &DataConfig,
        seq_len: u32,
        seed: u64,
        val_sequences: usize,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        data.validate()?;
        let (spec, band) = (data.spec.clone(), data.band);
        let token_layout = TokenLayout::new(&spec, seq_len)?;
        let sim = GpuSimulator::new(gpu, &spec)?;
        let settings = SearchSettings { band, ..Default::default() };
        progress(&format!(
            "searching {} training and {} validation NCA rules in band {band}",
            data.rules, data.val_rules
        ));
        let rules =
            search_rules(&sim, &spec, seed, Split::Train, 0..data.rules, &settings, &mut |_| {})?.rules;
        let val_rules =
            search_rules(&sim, &spec, seed, Split::Val, 0..data.val_rules, &settings, &mut |_| {})?.rules;
        let layout = SequenceLayout {
            stride: token_layout.stored_len(),
            masked: token_layout.masked_targets(),
            frame_len: token_layout.frame_len(),
            states: spec.states,
            vocab: token_layout.vocab_size(),
        };
        // Validation: held-out rules, cycling through them when more sequences than rules are asked for.
        let rec = Recording::sequence(&token_layout);
        let val_tables =
            val_rules.par_iter().map(|r| Rule::sample(&spec, r.key).table(&spec)).collect::<Vec<_>>();
        let sims: Vec<SimRequest> = (0..val_sequences)
            .map(|i| {
                let r = i % val_rules.len();
                SimRequest {
                    rule: r as u32,
                    key: sequence_key(val_rules[r].key, 0, (i / val_rules.len()) as u64),
                }
            })
            .collect();
        let validation = ValidationSet { tokens: sim.run(&val_tables, &sims, &rec)?, count: val_sequences };
        let tables = rules.par_iter().map(|r| Rule::sample(&spec, r.key).table(&spec)).collect::<Vec<_>>();
        let rule_buffer = sim.upload_rules(&tables)?;
        let rule_count = rules.len() as u64;
        Ok(Self {
            sim,
            spec,
            seed,
            band,
            redraw: data.redraw_rules,
            rules,
            rule_buffer,
            rules_epoch: 0,
            order: (0, epoch_order(rule_count as usize, seed, 0)),
            rule_count,
            layout,
            validation,
        })
    }

    fn encode(&mut self, rec: &mut Recorder, staging: &GpuTensor, first: u64, sequences: u32) -> Result<()> {
        let mut sims = Vec::with_capacity(sequences as usize);
        for g in first..first + u64::from(sequences) {
            let (epoch, pos) = (g / self.rule_count, (g % self.rule_count) as usize);
            if self.redraw && epoch != self.rules_epoch {
                // Fresh rules for the epoch, from their own seed; sims of one micro-batch may span two.
                let settings = SearchSettings { band: self.band, ..Default::default() };
                let seed = derive_key(self.seed, &[0x7e_d7a3, epoch]);
                self.rules = search_rules(
                    &self.sim,
                    &self.spec,
                    seed,
                    Split::Train,
                    0..self.rule_count,
                    &settings,
                    &mut |_| {},
                )?
                .rules;
                let tables = self
                    .rules
                    .par_iter()
                    .map(|r| Rule::sample(&self.spec, r.key).table(&self.spec))
                    .collect::<Vec<_>>();
                self.rule_buffer = self.sim.upload_rules(&tables)?;
                self.rules_epoch = epoch;
                ensure!(
                    sims.is_empty(),
                    "a micro-batch may not straddle a rule redraw; use a rule count divisible by the batch"
                );
            }
            if self.order.0 != epoch {
                self.order = (epoch, epoch_order(self.rule_count as usize, self.seed, epoch));
            }
            let rule = self.order.1[pos];
            sims.push(SimRequest { rule, key: sequence_key(self.rules[rule as usize].key, epoch, 0) });
        }
        let rec_spec = Recording {
            frames: self.layout.stride.div_ceil(self.layout.frame_len),
            delimiters: true,
            tokens_per_sim: self.layout.stride,
        };
        self.sim.encode(rec.encoder(), &self.rule_buffer, self.rules.len(), &sims, &rec_spec, &staging.buffer)
    }
}

/// Sequences from `train.bin`/`val.bin` of an `ncalm generate` directory, mapped.
pub struct FileStream {
    dir: String,
    tokens: Tokens,
    count: u64,
    seed: u64,
    order: (u64, Vec<u32>),
    pub layout: SequenceLayout,
    pub validation: ValidationSet,
}

impl FileStream {
    pub fn open(dir: &Path, seq_len: u32, seed: u64, val_sequences: usize) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        if manifest.seq_len < seq_len {
            bail!(
                "{} holds sequences of {} tokens; the model's context needs {seq_len}",
                dir.display(),
                manifest.seq_len
            );
        }
        let tokens = load_tokens(dir, &manifest, Split::Train)?;
        let stride = manifest.stored_len;
        let count = tokens.len() as u64 / u64::from(stride);
        ensure!(count > 0, "{}: train.bin holds no sequences", dir.display());
        let val = load_tokens(dir, &manifest, Split::Val).context("validation sequences")?;
        let val_count = (val.len() / stride as usize).min(val_sequences);
        ensure!(val_count > 0, "{}: val.bin holds no sequences to validate on", dir.display());
        let layout = SequenceLayout {
            stride,
            masked: manifest.masked_targets,
            frame_len: manifest.frame_len,
            states: manifest.states,
            vocab: manifest.vocab_size,
        };
        let validation = ValidationSet {
            tokens: val[..val_count * stride as usize].iter().map(|&t| u32::from(t)).collect(),
            count: val_count,
        };
        Ok(Self {
            dir: dir.display().to_string(),
            tokens,
            count,
            seed,
            order: (0, epoch_order(count as usize, seed, 0)),
            layout,
            validation,
        })
    }

    fn upload(&mut self, gpu: &Gpu, staging: &GpuTensor, first: u64, sequences: u32) -> Result<()> {
        let stride = self.layout.stride as usize;
        let mut host = Vec::with_capacity(sequences as usize * stride);
        for g in first..first + u64::from(sequences) {
            let epoch = g / self.count;
            if self.order.0 != epoch {
                self.order = (epoch, epoch_order(self.count as usize, self.seed, epoch));
            }
            let s = self.order.1[(g % self.count) as usize] as usize;
            host.extend(self.tokens[s * stride..(s + 1) * stride].iter().map(|&t| u32::from(t)));
        }
        // Queued writes land before the next submission, so each micro-batch is submitted on its own.
        gpu.write(&staging.slice(0, host.len()), &host);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_blocks_cover_the_stream() {
        let tokens: Vec<u16> = (0..1000).map(|i| (i % 50) as u16).collect();
        let val = Tokens::from(tokens[..200].to_vec());
        let s = HostStream::text("t", tokens.clone().into(), &val, 50, 10, 1, 4).unwrap();
        let seq = s.sequence(0);
        assert_eq!(seq.len(), 11);
        assert_eq!(s.validation.count, 4);
        assert!(HostStream::text("t", tokens[..5].to_vec().into(), &val, 50, 10, 1, 4).is_err());
        let err = HostStream::text("t", tokens.into(), &val, 49, 10, 1, 4).err().unwrap().to_string();
        assert!(err.contains("training token 49 at position 49"), "{err}");
    }

    /// Resident memory of this process, where the platform says (Linux).
    fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    #[test]
    fn a_file_of_more_than_2_pow_32_tokens_is_mapped_and_sampled_at_its_far_end() {
        use std::io::{Seek, SeekFrom, Write};
        // Blocks of L tokens; the last of 2^22 + 1 blocks covers tokens [2^32, 2^32 + L + 1).
        let l = 1024u64;
        let len = (1u64 << 32) + l + 1;
        let dir = tempfile::tempdir().unwrap();
        let far_end: Vec<u16> = (0..=l).map(|i| (i * 37 % 50_000 + 1) as u16).collect();
        let le = |tokens: &[u16]| tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>();
        // Sparse: set_len costs no disk, only the far end is written.
        let mut train = std::fs::File::create(dir.path().join("train.bin")).unwrap();
        train.set_len(2 * len).unwrap();
        train.seek(SeekFrom::Start(2 << 32)).unwrap();
        train.write_all(&le(&far_end)).unwrap();
        drop(train);
        std::fs::write(dir.path().join("val.bin"), le(&far_end)).unwrap();
        let before = resident_bytes();
        let data = crate::data::TextData::open(dir.path()).unwrap();
        assert!(data.train.is_mapped());
        assert_eq!(data.train.len() as u64, len);
        let corpus = data.clone();
        assert!(corpus.train.shares_storage_with(&data.train), "a clone copied the tokens");
        let stream =
            HostStream::text("big", corpus.train, &corpus.val, data.vocab_size, l as u32, 1, 1).unwrap();
        let HostKind::Text { blocks, order, .. } = &stream.kind else { unreachable!() };
        assert_eq!(*blocks, (1 << 22) + 1);
        let last = order.borrow().1.iter().position(|&b| u64::from(b) == blocks - 1).unwrap() as u64;
        let expected: Vec<u32> = far_end.iter().map(|&t| u32::from(t)).collect();
        assert_eq!(stream.sequence(last), expected);
        // Global sequence indices past 2^32 (epoch 1024 here) read as well.
        let later = last + blocks * 1024;
        assert!(later > u64::from(u32::MAX));
        assert_eq!(stream.sequence(later).len(), expected.len());
        if let (Some(before), Some(after)) = (before, resident_bytes()) {
            // The file is 8 GiB; opening and sampling it keep well under one.
            assert!(after.saturating_sub(before) < 512 << 20, "{before} -> {after} bytes resident");
        }
    }

    #[test]
    fn epoch_orders_are_permutations_that_differ() {
        let a = epoch_order(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        assert_ne!(a, epoch_order(100, 1, 1));
        assert_eq!(a, epoch_order(100, 1, 0));
    }
}
