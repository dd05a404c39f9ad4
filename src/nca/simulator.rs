//! What a simulator is asked to do, and the CPU implementation built on the reference.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::reference::rollout;
use super::rule::RuleTable;
use super::spec::{NcaSpec, TokenLayout};

/// One simulation to run: which rule (an index into the tables passed along) and its random key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimRequest {
    pub rule: u32,
    pub key: u64,
}

/// What a simulation writes: how many frames after burn-in, with or without frame delimiters, and how
/// many tokens (the frames' tokens are cut to this count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recording {
    pub frames: u32,
    pub delimiters: bool,
    pub tokens_per_sim: u32,
}

impl Recording {
    /// A training sequence: L + 1 tokens with delimiters.
    pub fn sequence(layout: &TokenLayout) -> Self {
        Self { frames: layout.frames(), delimiters: true, tokens_per_sim: layout.stored_len() }
    }

    /// The gzip filter's scoring rollout: `frames` frames of patch ids, no delimiters.
    pub fn scoring(layout: &TokenLayout, frames: u32) -> Self {
        Self { frames, delimiters: false, tokens_per_sim: frames * layout.patches() }
    }
}

/// Runs simulations and returns their tokens, `rec.tokens_per_sim` per simulation in request order.
pub trait Simulate {
    fn simulate(&self, tables: &[RuleTable], sims: &[SimRequest], rec: &Recording) -> Result<Vec<u32>>;
    /// Which device runs it, for logs and manifests.
    fn describe(&self) -> String;
}

/// The reference simulator on all CPU cores: the ground truth, and a fallback without a GPU.
pub struct CpuSimulator {
    spec: NcaSpec,
}

impl CpuSimulator {
    pub fn new(spec: &NcaSpec) -> Result<Self> {
        spec.validate()?;
        Ok(Self { spec: spec.clone() })
    }
}

impl Simulate for CpuSimulator {
    fn simulate(&self, tables: &[RuleTable], sims: &[SimRequest], rec: &Recording) -> Result<Vec<u32>> {
        if let Some(s) = sims.iter().find(|s| s.rule as usize >= tables.len()) {
            bail!("simulation asks for rule {} of {}", s.rule, tables.len());
        }
        let layout = TokenLayout::new(&self.spec, 2)?;
        let tokens = |s: &SimRequest| {
            let frames = rollout(&self.spec, &tables[s.rule as usize], s.key, rec.frames);
            let mut out = Vec::new();
            for f in &frames {
                layout.push_frame(f, rec.delimiters, &mut out);
            }
            out.resize(rec.tokens_per_sim as usize, 0);
            out
        };
        Ok(sims.par_iter().map(tokens).collect::<Vec<_>>().concat())
    }

    fn describe(&self) -> String {
        "CPU reference".to_string()
    }
}
