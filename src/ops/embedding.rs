//! Token embedding, the model's first op: `out[t]` = `table[ids[t]]` for a table `[vocab, dim]` and u32 ids.
//! Its backward pass sums each token's gradient row into its table row, deterministically (in token
//! order) and without float atomics. Ids >= vocab read as zero rows and their gradients are dropped, so a
//! bad id cannot reach memory outside the table.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, Shader, WgslConst};

pub const SHADER: Shader = Shader::new("embedding", include_str!("../../shaders/embedding.wgsl"))
    .with_consts(&[("BLOCK_ROWS", WgslConst::U32(BLOCK_ROWS))]);

/// Vocabulary rows per backward workgroup.
const BLOCK_ROWS: u32 = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    vocab: u32,
    dim: u32,
    accumulate: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { tokens, vocab, dim, accumulate })
}

/// Checks the shapes shared by both passes: `table` [vocab, dim], `ids` [tokens], `rows` [tokens, dim].
fn check(
    pass: &str,
    table: &GpuTensor,
    ids: &GpuTensor,
    rows: &GpuTensor,
    tokens: u32,
    vocab: u32,
    dim: u32,
) -> Result<()> {
    ensure!(dim > 0, "embedding {pass}: dim must be positive");
    let (table_len, rows_len) = (vocab as usize * dim as usize, tokens as usize * dim as usize);
    ensure!(
        table_len <= u32::MAX as usize && rows_len <= u32::MAX as usize,
        "embedding {pass}: vocab {vocab} or tokens {tokens} x dim {dim} exceed u32 indexing"
    );
    ensure!(
        table.len == table_len,
        "embedding {pass}: table has {} elements, vocab {vocab} x dim {dim} = {table_len}",
        table.len
    );
    ensure!(ids.len == tokens as usize, "embedding {pass}: ids has {} elements, tokens is {tokens}", ids.len);
    ensure!(
        rows.len == rows_len,
        "embedding {pass}: token rows have {} elements, tokens {tokens} x dim {dim} = {rows_len}",
        rows.len
    );
    Ok(())
}

/// `out[t]` = `table[ids[t]]`; `ids` holds u32 token ids.
pub fn forward(
    rec: &mut Recorder,
    table: &GpuTensor,
    ids: &GpuTensor,
    out: &GpuTensor,
    tokens: u32,
    vocab: u32,
    dim: u32,
) -> Result<()> {
    check("forward", table, ids, out, tokens, vocab, dim)?;
    let params = Params { tokens, vocab, dim, accumulate: 0 };
    let workgroups = grid_1d((tokens * dim).div_ceil(256));
    rec.dispatch(&SHADER, "forward", &params, &[ids, table, out], workgroups)
}

/// `dtable[v]` = sum of `dout[t]` over the tokens with `ids[t]` == v, in token order; written (rows of absent
/// ids become zero) or, when `accumulate`, added to what dtable holds.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rec: &mut Recorder,
    dout: &GpuTensor,
    ids: &GpuTensor,
    dtable: &GpuTensor,
    tokens: u32,
    vocab: u32,
    dim: u32,
    accumulate: bool,
) -> Result<()> {
    check("backward", dtable, ids, dout, tokens, vocab, dim)?;
    let params = Params { tokens, vocab, dim, accumulate: u32::from(accumulate) };
    rec.dispatch(&SHADER, "backward", &params, &[ids, dtable, dout], grid_1d(vocab.div_ceil(BLOCK_ROWS)))
}

/// The plain-Rust reference (f64); like the kernels, it skips ids outside the table.
pub mod reference {
    pub fn forward(table: &[f64], ids: &[u32], dim: usize) -> Vec<f64> {
        let vocab = table.len() / dim;
        let mut out = vec![0.0; ids.len() * dim];
        for (row, &id) in out.chunks_exact_mut(dim).zip(ids) {
            if (id as usize) < vocab {
                row.copy_from_slice(&table[id as usize * dim..(id as usize + 1) * dim]);
            }
        }
        out
    }

    pub fn backward(dout: &[f64], ids: &[u32], vocab: usize, dim: usize) -> Vec<f64> {
        let mut dtable = vec![0.0; vocab * dim];
        for (row, &id) in dout.chunks_exact(dim).zip(ids) {
            if (id as usize) < vocab {
                for (d, g) in dtable[id as usize * dim..(id as usize + 1) * dim].iter_mut().zip(row) {
                    *d += g;
                }
            }
        }
        dtable
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use crate::ops::testing::*;

    #[test]
    fn reference_gradients_match_finite_differences() {
        let (vocab, dim) = (6, 5);
        // Repeated ids, an absent id (5) and an out-of-range one (9, ignored).
        let ids = [3u32, 0, 3, 1, 9, 3, 0, 2, 4];
        let table = randn(vocab * dim, 1);
        let r = randn(ids.len() * dim, 2);
        let dtable = backward(&r, &ids, vocab, dim);
        let fd = finite_difference(&|t| weighted_sum(&r, &forward(t, &ids, dim)), &table, 1e-6);
        assert_close("embedding dtable vs finite differences", &dtable, &fd, 1e-6);
        assert!(dtable[5 * dim..].iter().all(|&g| g == 0.0), "an absent id gets a zero gradient");
    }
}
