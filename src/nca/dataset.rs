//! NCA token data sets: the rule search under the gzip filter, sequence generation, and the files
//! `ncalm generate` writes (`train.bin`, `val.bin`: flat little-endian uint16, L + 1 tokens per
//! sequence, in rule order; `manifest.json`: what produced them).

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::complexity::{gzip_ratio, histogram, Band, SCORE_FRAMES};
use super::rule::Rule;
use super::simulator::{Recording, SimRequest, Simulate};
use super::spec::{NcaSpec, TokenLayout};
use crate::rng::derive_key;
use crate::util::{write_atomic, AtomicFile};

/// Training rules and held-out validation rules come from disjoint random streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    fn id(self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Val => 1,
        }
    }
}

const PURPOSE_SCORE: u64 = 0;
const PURPOSE_SEQUENCE: u64 = 1;

/// Rule `index` of a split takes the first of its candidates (attempt 0, 1, ...) that passes the filter.
/// Each rule has its own candidate stream, so any range of rules can be searched alone (sharding).
pub fn candidate_key(seed: u64, split: Split, index: u64, attempt: u64) -> u64 {
    derive_key(seed, &[split.id(), index, attempt])
}

/// The key of the separate rollout that scores a candidate.
pub fn scoring_key(rule_key: u64) -> u64 {
    derive_key(rule_key, &[PURPOSE_SCORE])
}

/// The key of simulation `sim` of a rule in `epoch` (one fresh trajectory per rule per epoch).
pub fn sequence_key(rule_key: u64, epoch: u64, sim: u64) -> u64 {
    derive_key(rule_key, &[PURPOSE_SEQUENCE, epoch, sim])
}

/// A rule that passed the filter.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceptedRule {
    pub index: u64,
    pub attempt: u64,
    pub key: u64,
    pub ratio: f64,
}

/// The outcome of a rule search: accepted rules in index order and every candidate's ratio.
#[derive(Clone, Debug, Default)]
pub struct SearchOutcome {
    pub rules: Vec<AcceptedRule>,
    pub ratios: Vec<f64>,
}

impl SearchOutcome {
    pub fn candidates(&self) -> u64 {
        self.ratios.len() as u64
    }
}

/// Settings of the rule search.
#[derive(Clone, Debug)]
pub struct SearchSettings {
    pub band: Band,
    /// Below this measured acceptance rate the search stops with an error instead of running on.
    pub min_acceptance: f64,
    /// Candidates scored per simulator call.
    pub batch: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self { band: Band::PAPER_DEFAULT, min_acceptance: 0.002, batch: 8192 }
    }
}

/// Candidates scored before a low acceptance rate is judged final.
const MIN_CANDIDATES_TO_JUDGE: u64 = 2000;

/// Scores candidate rules: a fresh rollout each, `SCORE_FRAMES` frames after burn-in, gzip ratio of
/// their patch ids as int32.
pub fn score_candidates(sim: &dyn Simulate, spec: &NcaSpec, keys: &[u64]) -> Result<Vec<f64>> {
    let layout = TokenLayout::new(spec, 2)?;
    let tables = keys.par_iter().map(|&k| Rule::sample(spec, k).table(spec)).collect::<Vec<_>>();
    let sims: Vec<SimRequest> =
        keys.iter().enumerate().map(|(i, &k)| SimRequest { rule: i as u32, key: scoring_key(k) }).collect();
    let rec = Recording::scoring(&layout, SCORE_FRAMES);
    let tokens = sim.simulate(&tables, &sims, &rec)?;
    let per = rec.tokens_per_sim as usize;
    let rollouts: Vec<&[u32]> = tokens.chunks(per).collect();
    Ok(rollouts.par_iter().map(|t| gzip_ratio(t)).collect())
}

/// Finds the accepted rules `range` of a split. `progress` is told how many rules are settled.
pub fn search_rules(
    sim: &dyn Simulate,
    spec: &NcaSpec,
    seed: u64,
    split: Split,
    range: Range<u64>,
    settings: &SearchSettings,
    progress: &mut dyn FnMut(u64),
) -> Result<SearchOutcome> {
    let mut out = SearchOutcome::default();
    let mut accepted: Vec<AcceptedRule> = Vec::with_capacity((range.end - range.start) as usize);
    let mut pending: Vec<(u64, u64)> = range.clone().map(|i| (i, 0)).collect();
    let cap =
        (range.end - range.start) as f64 / settings.min_acceptance * 4.0 + MIN_CANDIDATES_TO_JUDGE as f64;
    while !pending.is_empty() {
        let mut next = Vec::new();
        for chunk in pending.chunks(settings.batch.max(1)) {
            let keys: Vec<u64> = chunk.iter().map(|&(i, a)| candidate_key(seed, split, i, a)).collect();
            let ratios = score_candidates(sim, spec, &keys)?;
            for ((&(index, attempt), &key), &ratio) in chunk.iter().zip(&keys).zip(&ratios) {
                if settings.band.contains(ratio) {
                    accepted.push(AcceptedRule { index, attempt, key, ratio });
                } else {
                    next.push((index, attempt + 1));
                }
            }
            out.ratios.extend(ratios);
            progress(accepted.len() as u64);
            let candidates = out.ratios.len() as u64;
            let rate = accepted.len() as f64 / candidates as f64;
            if (candidates >= MIN_CANDIDATES_TO_JUDGE && rate < settings.min_acceptance)
                || candidates as f64 > cap
            {
                bail!("{}", too_few_pass(&out.ratios, accepted.len(), settings));
            }
        }
        pending = next;
    }
    accepted.sort_by_key(|r| r.index);
    out.rules = accepted;
    Ok(out)
}

fn too_few_pass(ratios: &[f64], accepted: usize, settings: &SearchSettings) -> String {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p) as usize];
    format!(
        "too few candidate rules pass the complexity band {}: {accepted} of {} ({:.4}%), below the minimum \
         acceptance rate of {}%. Candidate gzip ratios ranged {:.3}..{:.3} (median {:.3}); choose a band \
         inside that range or lower --min-acceptance.",
        settings.band,
        ratios.len(),
        100.0 * accepted as f64 / ratios.len() as f64,
        100.0 * settings.min_acceptance,
        q(0.0),
        q(1.0),
        q(0.5),
    )
}

/// Simulations per simulator call when generating sequences (32 MiB of tokens at L = 1024).
const SEQUENCE_BATCH: u64 = 8192;

/// Simulates `sims_per_rule` sequences of each rule (rule-major order) and hands them to `sink` in
/// batches of whole rules.
pub fn generate_sequences(
    sim: &dyn Simulate,
    spec: &NcaSpec,
    layout: &TokenLayout,
    rules: &[AcceptedRule],
    sims_per_rule: u64,
    epoch: u64,
    sink: &mut dyn FnMut(&[u32]) -> Result<()>,
) -> Result<()> {
    let rec = Recording::sequence(layout);
    let rules_per_batch = (SEQUENCE_BATCH / sims_per_rule.max(1)).max(1) as usize;
    for chunk in rules.chunks(rules_per_batch) {
        let tables = chunk.par_iter().map(|r| Rule::sample(spec, r.key).table(spec)).collect::<Vec<_>>();
        let sims: Vec<SimRequest> = chunk
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                (0..sims_per_rule)
                    .map(move |s| SimRequest { rule: i as u32, key: sequence_key(r.key, epoch, s) })
            })
            .collect();
        sink(&sim.simulate(&tables, &sims, &rec)?)?;
    }
    Ok(())
}

/// One of N disjoint parts of a data set (`--shard I/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Parses "I/N" with 0 <= I < N.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed =
            text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Self { index, count }),
            _ => bail!("shard must be written I/N with 0 <= I < N (e.g. 3/8), got {text:?}"),
        }
    }

    /// This shard's part of `total` items: contiguous, so shards concatenate in order to the whole.
    pub fn range(&self, total: u64) -> Range<u64> {
        let at = |i: u64| (u128::from(total) * u128::from(i) / u128::from(self.count)) as u64;
        at(self.index)..at(self.index + 1)
    }
}

/// Everything `ncalm generate` needs.
#[derive(Clone, Debug)]
pub struct GenerateConfig {
    pub spec: NcaSpec,
    pub seq_len: u32,
    pub rules: u64,
    pub val_rules: u64,
    pub sims_per_rule: u64,
    pub seed: u64,
    pub shard: Shard,
    pub search: SearchSettings,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            spec: NcaSpec::default(),
            seq_len: 1024,
            rules: 16_000,
            val_rules: 2_000,
            sims_per_rule: 1,
            seed: 0,
            shard: Shard::WHOLE,
            search: SearchSettings::default(),
        }
    }
}

impl GenerateConfig {
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        TokenLayout::new(&self.spec, self.seq_len)?;
        if self.rules == 0 {
            bail!("--rules must be at least 1");
        }
        if self.sims_per_rule == 0 {
            bail!("--sims-per-rule must be at least 1");
        }
        if !(self.search.min_acceptance > 0.0 && self.search.min_acceptance <= 1.0) {
            bail!("--min-acceptance must be in (0, 1], got {}", self.search.min_acceptance);
        }
        let sequences = (self.rules + self.val_rules).checked_mul(self.sims_per_rule);
        if sequences.is_none_or(|s| s > 1 << 40) {
            bail!("rules x sims per rule is too large");
        }
        Ok(())
    }
}

/// Per-split counts in the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub file: String,
    pub rules: [u64; 2],
    pub candidates: u64,
    pub accepted: u64,
    pub acceptance_rate: f64,
    pub sequences: u64,
    pub tokens: u64,
}

/// `manifest.json`: what produced the token files and how to read them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub dtype: String,
    pub seq_len: u32,
    /// Tokens stored per sequence (seq_len + 1: input and shifted target).
    pub stored_len: u32,
    pub vocab_size: u32,
    pub states: u32,
    pub grid: u32,
    pub band: [f64; 2],
    pub candidates: u64,
    pub accepted: u64,
    pub acceptance_rate: f64,
    pub sequences: u64,
    pub tokens: u64,
    pub seed: u64,
    pub gzip_histogram: Vec<u64>,
    pub gzip_histogram_bin_width: f64,
    pub frame_len: u32,
    pub frames: u32,
    pub grid_token: u32,
    pub end_grid_token: u32,
    /// Targets at positions below this lie in the first frame and are not trained on.
    pub masked_targets: u32,
    pub sims_per_rule: u64,
    pub shard: Shard,
    pub train: SplitSummary,
    pub val: SplitSummary,
    #[serde(deserialize_with = "complete_spec")]
    pub spec: NcaSpec,
    pub score_frames: u32,
    pub min_acceptance: f64,
    pub generator: String,
}

/// A manifest's rule family, every setting present: presets may leave settings to the paper's defaults,
/// but a manifest records what produced its tokens, so a missing one means the file is damaged.
fn complete_spec<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<NcaSpec, D::Error> {
    use serde::de::Error;
    let value = serde_json::Value::deserialize(deserializer)?;
    let keys = serde_json::to_value(NcaSpec::default()).map_err(D::Error::custom)?;
    let present = value.as_object().map(|o| o.keys().collect::<Vec<_>>()).unwrap_or_default();
    let keys = keys.as_object().expect("a spec serialises to an object").keys();
    if let Some(missing) = keys.into_iter().find(|k| !present.contains(k)) {
        return Err(D::Error::custom(format!("spec: missing field `{missing}`")));
    }
    serde_json::from_value(value).map_err(D::Error::custom)
}

pub const MANIFEST: &str = "manifest.json";
pub const FORMAT: &str = "ncalm-nca-tokens-v1";

impl Manifest {
    pub fn layout(&self) -> TokenLayout {
        TokenLayout { grid: self.grid, states: self.states, seq_len: self.seq_len }
    }

    /// Reads and checks a manifest.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {} (is {} an ncalm data set?)", path.display(), dir.display())
        })?;
        let m: Manifest = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid ncalm manifest", path.display()))?;
        if m.format != FORMAT {
            bail!("{}: format {:?}, expected {FORMAT:?}", path.display(), m.format);
        }
        m.spec.validate().with_context(|| format!("{}: bad spec", path.display()))?;
        let layout = TokenLayout::new(&m.spec, m.seq_len).with_context(|| format!("{}", path.display()))?;
        let derived = [
            ("stored_len", m.stored_len, layout.stored_len()),
            ("vocab_size", m.vocab_size, layout.vocab_size()),
            ("states", m.states, m.spec.states),
            ("grid", m.grid, m.spec.grid),
            ("frame_len", m.frame_len, layout.frame_len()),
            ("frames", m.frames, layout.frames()),
            ("grid_token", m.grid_token, layout.grid_token()),
            ("end_grid_token", m.end_grid_token, layout.end_grid_token()),
            ("masked_targets", m.masked_targets, layout.masked_targets()),
        ];
        for (field, got, want) in derived {
            if got != want {
                bail!("{}: {field} is {got}, but its spec and seq_len give {want}", path.display());
            }
        }
        for (field, file) in [("train.file", &m.train.file), ("val.file", &m.val.file)] {
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                bail!("{}: {field} must name a file beside the manifest, got {file:?}", path.display());
            }
        }
        Ok(m)
    }
}

/// Generates a data set (or one shard of it) into `dir`. Files are written under temporary names and
/// renamed at the end, the manifest last, so an interrupted run leaves no file that looks complete.
pub fn generate(
    sim: &dyn Simulate,
    cfg: &GenerateConfig,
    dir: &Path,
    report: &mut dyn FnMut(&str, u64, u64),
) -> Result<Manifest> {
    cfg.validate()?;
    let spec = &cfg.spec;
    let layout = TokenLayout::new(spec, cfg.seq_len)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut summaries = Vec::new();
    let mut all_ratios = Vec::new();
    let mut files = Vec::new();
    for (split, total, file) in
        [(Split::Train, cfg.rules, "train.bin"), (Split::Val, cfg.val_rules, "val.bin")]
    {
        let range = cfg.shard.range(total);
        let n_rules = range.end - range.start;
        let label = match split {
            Split::Train => "search train rules",
            Split::Val => "search val rules",
        };
        let outcome = search_rules(sim, spec, cfg.seed, split, range.clone(), &cfg.search, &mut |done| {
            report(label, done, n_rules)
        })?;
        let mut out = AtomicFile::create(&dir.join(file))?;
        let mut sequences = 0u64;
        let total_seqs = n_rules * cfg.sims_per_rule;
        let label = match split {
            Split::Train => "simulate train",
            Split::Val => "simulate val",
        };
        let mut sink = |tokens: &[u32]| -> Result<()> {
            let bytes: Vec<u8> = tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect();
            out.writer().write_all(&bytes).with_context(|| format!("writing {file}"))?;
            sequences += (tokens.len() / layout.stored_len() as usize) as u64;
            report(label, sequences, total_seqs);
            Ok(())
        };
        generate_sequences(sim, spec, &layout, &outcome.rules, cfg.sims_per_rule, 0, &mut sink)?;
        files.push(out);
        let candidates = outcome.candidates();
        let accepted = outcome.rules.len() as u64;
        summaries.push(SplitSummary {
            file: file.to_string(),
            rules: [range.start, range.end],
            candidates,
            accepted,
            acceptance_rate: if candidates > 0 { accepted as f64 / candidates as f64 } else { 0.0 },
            sequences,
            tokens: sequences * u64::from(layout.stored_len()),
        });
        all_ratios.extend(outcome.ratios);
    }
    let val = summaries.pop().expect("two splits");
    let train = summaries.pop().expect("two splits");
    let candidates = train.candidates + val.candidates;
    let accepted = train.accepted + val.accepted;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        dtype: "uint16-le".to_string(),
        seq_len: cfg.seq_len,
        stored_len: layout.stored_len(),
        vocab_size: layout.vocab_size(),
        states: spec.states,
        grid: spec.grid,
        band: [cfg.search.band.lower, cfg.search.band.upper],
        candidates,
        accepted,
        acceptance_rate: if candidates > 0 { accepted as f64 / candidates as f64 } else { 0.0 },
        sequences: train.sequences,
        tokens: train.tokens,
        seed: cfg.seed,
        gzip_histogram: histogram(&all_ratios),
        gzip_histogram_bin_width: 0.05,
        frame_len: layout.frame_len(),
        frames: layout.frames(),
        grid_token: layout.grid_token(),
        end_grid_token: layout.end_grid_token(),
        masked_targets: layout.masked_targets(),
        sims_per_rule: cfg.sims_per_rule,
        shard: cfg.shard,
        train,
        val,
        spec: spec.clone(),
        score_frames: SCORE_FRAMES,
        min_acceptance: cfg.search.min_acceptance,
        generator: format!("ncalm {}", env!("CARGO_PKG_VERSION")),
    };
    for f in files {
        f.commit()?;
    }
    let json = serde_json::to_string_pretty(&manifest)? + "\n";
    write_atomic(&dir.join(MANIFEST), json.as_bytes())?;
    Ok(manifest)
}

/// Reads one split's token file and checks it against its manifest: whole sequences, the count the
/// manifest promises, every id below the vocabulary.
pub fn load_tokens(dir: &Path, manifest: &Manifest, split: Split) -> Result<Vec<u16>> {
    let summary = match split {
        Split::Train => &manifest.train,
        Split::Val => &manifest.val,
    };
    let path = dir.join(&summary.file);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() % 2 != 0 {
        bail!(
            "{} has {} bytes, not a whole number of uint16 tokens (truncated?)",
            path.display(),
            bytes.len()
        );
    }
    let tokens: Vec<u16> = bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    let stored = manifest.stored_len as usize;
    if !tokens.len().is_multiple_of(stored) {
        bail!(
            "{} holds {} tokens, not a whole number of {stored}-token sequences (truncated, or not this manifest's file?)",
            path.display(),
            tokens.len()
        );
    }
    if tokens.len() as u64 != summary.tokens {
        bail!(
            "{} holds {} tokens but the manifest promises {}",
            path.display(),
            tokens.len(),
            summary.tokens
        );
    }
    if let Some(at) = tokens.iter().position(|&t| u32::from(t) >= manifest.vocab_size) {
        bail!(
            "{}: token {} at position {at} (sequence {}) is not below the vocabulary size {}",
            path.display(),
            tokens[at],
            at / stored,
            manifest.vocab_size
        );
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_missing_a_rule_setting_is_refused() {
        let text = include_str!("../../tests/fuzz-seeds/nca/manifest.json");
        let intact: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(serde_json::from_value::<Manifest>(intact.clone()).is_ok());
        let mut damaged = intact;
        damaged["spec"].as_object_mut().unwrap().remove("hidden");
        let err = serde_json::from_value::<Manifest>(damaged).unwrap_err().to_string();
        assert!(err.contains("missing field `hidden`"), "{err}");
    }

    #[test]
    fn shards_partition_in_order() {
        for total in [0u64, 1, 7, 16_000] {
            for count in 1..6 {
                let mut next = 0;
                for index in 0..count {
                    let r = Shard { index, count }.range(total);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
        assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
        for bad in ["5/5", "1", "a/b", "-1/3", "0/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
