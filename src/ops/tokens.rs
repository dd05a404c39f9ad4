//! Token plumbing on the GPU: turning stored sequences (L + 1 tokens each) into a micro-batch of
//! input ids and shifted, masked targets, and greedy predictions for evaluation.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader, WgslConst};
use crate::ops::cross_entropy::IGNORE;

pub const SHADER: Shader = Shader::new("tokens", include_str!("../../shaders/tokens.wgsl"))
    .with_consts(&[("IGNORE", WgslConst::U32(IGNORE))]);

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { a, b, c, d })
}

/// ids[s, t] = source[s * stride + t], targets[s, t] = source[s * stride + t + 1], with targets at
/// positions t < `masked` set to IGNORE (the first frame of an NCA sequence).
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    rec: &mut Recorder,
    source: &GpuTensor,
    ids: &GpuTensor,
    targets: &GpuTensor,
    sequences: u32,
    seq_len: u32,
    stride: u32,
    masked: u32,
) -> Result<()> {
    ensure!(
        stride > seq_len,
        "stored sequences of {stride} tokens cannot give {seq_len} inputs and shifted targets"
    );
    let n = (sequences * seq_len) as usize;
    ensure!(
        ids.len >= n && targets.len >= n,
        "ids/targets hold {}/{} of the {n} positions",
        ids.len,
        targets.len
    );
    ensure!(
        source.len >= (sequences * stride) as usize,
        "source holds {} tokens, {} needed",
        source.len,
        sequences * stride
    );
    let params = Params { a: sequences, b: seq_len, c: stride, d: masked };
    rec.dispatch(&SHADER, "prepare", &params, &[source, ids, targets], grid_1d((n as u32).div_ceil(256)))
}

/// `out[row]` = argmax of `logits[row, ..vocab]` (the lowest index on ties).
pub fn argmax(rec: &mut Recorder, logits: &GpuTensor, out: &GpuTensor, rows: u32, vocab: u32) -> Result<()> {
    ensure!(
        logits.len >= (rows * vocab) as usize && out.len >= rows as usize,
        "argmax: tensors too small for {rows} x {vocab}"
    );
    let params = Params { a: rows, b: vocab, c: 0, d: 0 };
    rec.dispatch(&SHADER, "argmax", &params, &[out, out, out, logits], grid_1d(rows))
}

pub mod reference {
    use super::IGNORE;

    pub fn prepare(
        source: &[u32],
        sequences: usize,
        seq_len: usize,
        stride: usize,
        masked: usize,
    ) -> (Vec<u32>, Vec<u32>) {
        let mut ids = Vec::new();
        let mut targets = Vec::new();
        for s in 0..sequences {
            for t in 0..seq_len {
                ids.push(source[s * stride + t]);
                targets.push(if t < masked { IGNORE } else { source[s * stride + t + 1] });
            }
        }
        (ids, targets)
    }

    pub fn argmax(logits: &[f64], rows: usize, vocab: usize) -> Vec<u32> {
        logits
            .chunks(vocab)
            .take(rows)
            .map(|r| r.iter().enumerate().fold(0, |best, (j, &z)| if z > r[best] { j } else { best }) as u32)
            .collect()
    }
}
