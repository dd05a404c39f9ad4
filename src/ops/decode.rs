//! The kernels of decoding one token at a time on the GPU (`shaders/decode.wgsl`), for
//! [`GpuGenerator`](crate::model::infer::GpuGenerator): a matrix-vector product, the embedding of the
//! token at the current position, RoPE with the append to the key-value cache, single-query attention
//! over the cache, the NCA cell's causal perception, and the sampler. The position is read from a state
//! buffer on the GPU (`state[0]`, with the prompt's length in `state[1]`), so that every decode step
//! records the same dispatches; the sampler writes the next token into `tokens` and advances the
//! position.

use anyhow::{ensure, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::{grid_1d, GpuTensor, Recorder, ReducingShader, WgslConst};

/// The decode kernels, in both reduction builds, with the Philox generator of `shaders/rng.wgsl`.
pub const SHADER: ReducingShader =
    ReducingShader { tree: BUILDS.tree.with_rng(), subgroups: BUILDS.subgroups.with_rng() };

const BUILDS: ReducingShader = reducing_shader!(
    "decode",
    "decode.wgsl",
    &[
        ("WG", WgslConst::U32(WORKGROUP)),
        ("ROWS", WgslConst::U32(ROWS)),
        ("FLAG_BIAS", WgslConst::U32(FLAG_BIAS)),
        ("FLAG_ACCUMULATE", WgslConst::U32(FLAG_ACCUMULATE)),
    ]
);

/// Invocations per workgroup.
const WORKGROUP: u32 = 256;
/// Rows of W one matvec workgroup reduces.
const ROWS: u32 = 4;
const FLAG_BIAS: u32 = 1;
const FLAG_ACCUMULATE: u32 = 2;

/// Elements of the state buffer: the position, the prompt's length, and two spare words.
pub const STATE_LEN: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    flags: u32,
    heads: u32,
    head_dim: u32,
    capacity: u32,
    width: u32,
    allowed: u32,
    key_lo: u32,
    key_hi: u32,
    temperature: f32,
    top_p: f32,
    scale: f32,
    _pad: [u32; 3],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params {
        rows,
        cols,
        flags,
        heads,
        head_dim,
        capacity,
        width,
        allowed,
        key_lo,
        key_hi,
        temperature,
        top_p,
        scale
    })
}

/// Records `entry` with the tensors at bindings 1..=8 (`None`: not used by the entry point; a placeholder
/// is bound there).
fn launch(
    rec: &mut Recorder,
    entry: &str,
    params: &Params,
    tensors: [Option<&GpuTensor>; 8],
    workgroups: [u32; 3],
) -> Result<()> {
    let placeholder = tensors.iter().flatten().next().expect("every entry binds a tensor");
    let bound: Vec<&GpuTensor> = tensors.iter().map(|t| t.unwrap_or(placeholder)).collect();
    let shader = SHADER.for_gpu(rec.gpu());
    rec.dispatch(&shader, entry, params, &bound, workgroups)
}

/// y = W x (+ bias) for W `[rows, cols]` row-major, x `[cols]`, y `[rows]`; with `accumulate`, y += W x
/// (+ bias) (a residual add). y must not overlap x or W.
pub fn matvec(
    rec: &mut Recorder,
    w: &GpuTensor,
    x: &GpuTensor,
    bias: Option<&GpuTensor>,
    y: &GpuTensor,
    accumulate: bool,
) -> Result<()> {
    let (rows, cols) = (y.len, x.len);
    ensure!(rows > 0 && cols > 0, "decode matvec: empty x ({cols}) or y ({rows})");
    ensure!(
        w.len == rows * cols,
        "decode matvec: W has {} elements, y {rows} x x {cols} = {}",
        w.len,
        rows * cols
    );
    ensure!(w.len <= u32::MAX as usize, "decode matvec: W exceeds u32 indexing");
    ensure!(bias.is_none_or(|b| b.len == rows), "decode matvec: the bias must hold {rows} elements");
    ensure!(!y.overlaps(x) && !y.overlaps(w), "decode matvec: y {} overlaps x or W", y.label);
    let flags = bias.map_or(0, |_| FLAG_BIAS) | if accumulate { FLAG_ACCUMULATE } else { 0 };
    let params = Params { rows: rows as u32, cols: cols as u32, flags, ..Default::default() };
    rec.set_cost(2.0 * w.len as f64, 4.0 * (w.len + cols + 2 * rows) as f64);
    let groups = grid_1d((rows as u32).div_ceil(ROWS));
    launch(rec, "matvec", &params, [Some(x), Some(w), bias, Some(y), None, None, None, None], groups)
}

/// y = `table[tokens[pos]]` for table `[vocab, dim]` (a zero row for an id >= vocab).
pub fn embed(
    rec: &mut Recorder,
    table: &GpuTensor,
    tokens: &GpuTensor,
    state: &GpuTensor,
    y: &GpuTensor,
) -> Result<()> {
    let dim = y.len;
    ensure!(dim > 0 && table.len.is_multiple_of(dim), "decode embed: table of {} for dim {dim}", table.len);
    ensure!(state.len >= STATE_LEN, "decode embed: the state holds {} words", state.len);
    let params = Params { rows: (table.len / dim) as u32, cols: dim as u32, ..Default::default() };
    let groups = grid_1d((dim as u32).div_ceil(WORKGROUP));
    launch(
        rec,
        "embed",
        &params,
        [None, Some(table), None, Some(y), None, None, Some(tokens), Some(state)],
        groups,
    )
}

/// The shape of the attention of one decode step.
#[derive(Clone, Copy, Debug)]
pub struct CacheShape {
    pub heads: u32,
    pub head_dim: u32,
    /// Rows of the cache: the most positions it holds.
    pub capacity: u32,
}

impl CacheShape {
    fn check(&self, name: &str, cache: &GpuTensor) -> Result<usize> {
        let d = (self.heads * self.head_dim) as usize;
        ensure!(
            self.head_dim > 0 && self.head_dim.is_multiple_of(2),
            "decode {name}: head_dim {} must be even and positive",
            self.head_dim
        );
        ensure!(
            cache.len == self.capacity as usize * d,
            "decode {name}: the cache holds {} elements, capacity {} x {d} wanted",
            cache.len,
            self.capacity
        );
        Ok(d)
    }

    fn params(&self) -> Params {
        Params { heads: self.heads, head_dim: self.head_dim, capacity: self.capacity, ..Default::default() }
    }
}

/// Rotates the query in place and the key by RoPE at the position (`inv_freq` `[head_dim / 2]`, from
/// [`rope::inverse_frequencies`](crate::ops::rope::inverse_frequencies)), and writes the rotated key and
/// the value into row pos of `cache_k` and `cache_v` `[capacity, heads * head_dim]`; `qkv` holds the
/// query, key and value side by side, `[3 * heads * head_dim]`, as the fused projection writes them.
pub fn rope_append(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    cache_k: &GpuTensor,
    cache_v: &GpuTensor,
    inv_freq: &GpuTensor,
    state: &GpuTensor,
    shape: CacheShape,
) -> Result<()> {
    let d = shape.check("rope_append", cache_k)?;
    shape.check("rope_append", cache_v)?;
    ensure!(qkv.len == 3 * d, "decode rope_append: qkv must hold 3 x {d} elements");
    ensure!(
        inv_freq.len == shape.head_dim as usize / 2,
        "decode rope_append: inv_freq must hold head_dim / 2"
    );
    let groups = grid_1d((d as u32 / 2).div_ceil(WORKGROUP));
    let tensors = [Some(qkv), None, None, Some(cache_k), Some(cache_v), Some(inv_freq), None, Some(state)];
    launch(rec, "rope_append", &shape.params(), tensors, groups)
}

/// o = softmax(q k_j / sqrt(head_dim), j = 0..=pos) . v_j per head, over the caches `[capacity, d]`,
/// for the query q in the first third of `qkv` `[3d]`; `scores` `[heads, capacity]` is scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    cache_k: &GpuTensor,
    cache_v: &GpuTensor,
    scores: &GpuTensor,
    o: &GpuTensor,
    state: &GpuTensor,
    shape: CacheShape,
) -> Result<()> {
    let d = shape.check("attention", cache_k)?;
    shape.check("attention", cache_v)?;
    ensure!(qkv.len == 3 * d && o.len == d, "decode attention: qkv must hold 3 x {d} elements and o {d}");
    ensure!(
        scores.len == (shape.heads * shape.capacity) as usize,
        "decode attention: scores must hold heads x capacity"
    );
    let params = Params { scale: 1.0 / (shape.head_dim as f32).sqrt(), ..shape.params() };
    let tensors = [Some(qkv), Some(cache_k), Some(cache_v), Some(o), Some(scores), None, None, Some(state)];
    launch(rec, "attention", &params, tensors, grid_1d(shape.heads))
}

/// The NCA cell's causal perception at the position: stores `x` `[dim]` in `ring` `[width, dim]` (slot
/// pos % width) and writes perception = bias + sum over j < width of `kernel[j] * cell[pos - j]`, with
/// cells before the sequence start zero. `kernel` is `[width, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn perceive(
    rec: &mut Recorder,
    x: &GpuTensor,
    kernel: &GpuTensor,
    bias: &GpuTensor,
    ring: &GpuTensor,
    perception: &GpuTensor,
    state: &GpuTensor,
    width: u32,
) -> Result<()> {
    let dim = x.len;
    ensure!(width > 0, "decode perceive: width must be positive");
    ensure!(
        kernel.len == width as usize * dim && ring.len == kernel.len,
        "decode perceive: kernel and ring must hold width {width} x dim {dim}"
    );
    ensure!(bias.len == dim && perception.len == dim, "decode perceive: bias and perception must hold {dim}");
    let params = Params { cols: dim as u32, width, ..Default::default() };
    let tensors = [Some(x), Some(kernel), Some(bias), Some(perception), Some(ring), None, None, Some(state)];
    launch(rec, "perceive", &params, tensors, grid_1d((dim as u32).div_ceil(WORKGROUP)))
}

/// The sampler's settings for one draw.
#[derive(Clone, Copy, Debug)]
pub struct SampleParams {
    /// 0: greedy.
    pub temperature: f32,
    /// In (0, 1]: keep the smallest set of tokens whose probability reaches it.
    pub top_p: f32,
    /// The Philox key of this draw.
    pub key: u64,
    /// Only the first `allowed` logits are candidates.
    pub allowed: u32,
}

/// Picks the next token from `logits` (see [`reference::sample`]), writes it to `tokens[pos + 1]` unless
/// that position still lies in the prompt (`state[1]` tokens) or past `tokens`, and advances the position.
pub fn sample(
    rec: &mut Recorder,
    logits: &GpuTensor,
    tokens: &GpuTensor,
    state: &GpuTensor,
    s: SampleParams,
) -> Result<()> {
    ensure!(
        s.allowed > 0 && s.allowed as usize <= logits.len,
        "decode sample: {} allowed tokens of {} logits",
        s.allowed,
        logits.len
    );
    ensure!(
        s.temperature >= 0.0 && s.temperature.is_finite() && s.top_p > 0.0 && s.top_p <= 1.0,
        "decode sample: temperature must be >= 0 and top-p in (0, 1]"
    );
    ensure!(state.len >= STATE_LEN, "decode sample: the state holds {} words", state.len);
    let params = Params {
        capacity: tokens.len as u32,
        allowed: s.allowed,
        key_lo: s.key as u32,
        key_hi: (s.key >> 32) as u32,
        temperature: s.temperature,
        top_p: s.top_p,
        ..Default::default()
    };
    let tensors = [Some(logits), None, None, None, None, None, Some(tokens), Some(state)];
    launch(rec, "sample", &params, tensors, [1, 1, 1])
}

/// Plain-Rust twins of the kernels: the matvec and attention in f64, the sampler's rule exactly.
pub mod reference {
    use crate::rng::{gumbel, philox};

    /// y = W x for W `[rows, x.len()]` row-major.
    pub fn matvec(w: &[f64], x: &[f64]) -> Vec<f64> {
        w.chunks(x.len()).map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum()).collect()
    }

    /// Single-query attention of `q` `[heads * head_dim]` over `keys` and `values` `[n, heads * head_dim]`.
    pub fn attention(q: &[f64], keys: &[f64], values: &[f64], heads: usize) -> Vec<f64> {
        let d = q.len();
        let hd = d / heads;
        let n = keys.len() / d;
        let mut o = vec![0.0; d];
        for h in 0..heads {
            let r = h * hd..(h + 1) * hd;
            let scores: Vec<f64> = (0..n)
                .map(|j| {
                    q[r.clone()].iter().zip(&keys[j * d + h * hd..]).map(|(a, b)| a * b).sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for (j, wj) in e.iter().enumerate() {
                for c in 0..hd {
                    o[h * hd + c] += wj / z * values[j * d + h * hd + c];
                }
            }
        }
        o
    }

    /// The causal perception at position `pos` of a cell whose states so far are `cells` `[pos + 1, dim]`.
    pub fn perceive(cells: &[f64], kernel: &[f64], bias: &[f64], width: usize) -> Vec<f64> {
        let dim = bias.len();
        let pos = cells.len() / dim - 1;
        (0..dim)
            .map(|c| {
                bias[c]
                    + (0..width.min(pos + 1))
                        .map(|j| kernel[j * dim + c] * cells[(pos - j) * dim + c])
                        .sum::<f64>()
            })
            .collect()
    }

    /// What the sampler decided, and how close the decision was.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Pick {
        pub token: u32,
        /// Tokens kept by top-p (all of them when greedy).
        pub kept: usize,
        /// The winning score's lead over the runner-up (logit when greedy, logit / T + Gumbel noise
        /// otherwise; infinite with a single candidate).
        pub margin: f32,
    }

    /// The exp(logit / T - max) of every token, as the kernel computes them.
    fn weights(logits: &[f32], temperature: f32) -> (Vec<f32>, f32) {
        let m = logits.iter().map(|&z| z / temperature).fold(f32::NEG_INFINITY, f32::max);
        (logits.iter().map(|&z| (z / temperature - m).exp()).collect(), m)
    }

    /// The kept mass of the tokens whose weight is at least `t`.
    fn mass(e: &[f32], t: f32) -> f64 {
        e.iter().filter(|&&v| v >= t).map(|&v| f64::from(v)).sum()
    }

    /// The top-p threshold on the weights `e` (at most 1, the largest being exp(0)): the largest t
    /// (bisected on its f32 bits) whose kept mass reaches top_p of the total; 0 keeps every token.
    pub fn threshold(e: &[f32], top_p: f32) -> f32 {
        if top_p >= 1.0 {
            return 0.0;
        }
        let target = f64::from(top_p) * mass(e, 0.0);
        let (mut lo, mut hi) = (0u32, 1.0f32.to_bits() + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if mass(e, f32::from_bits(mid)) >= target {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        f32::from_bits(lo)
    }

    /// The sampler's rule over `logits` (the allowed ones): greedy at temperature 0, ties to the lowest
    /// index. Otherwise top-p keeps the smallest set of tokens whose probability at temperature T
    /// reaches top_p (every token at or above a probability threshold, found without sorting by
    /// bisecting its f32 bits), then picks the kept token with the largest logit / T + Gumbel noise,
    /// the noise of token i being `gumbel(philox(key, [i, 0, 0, 0])[0])`: Gumbel-max, which draws exactly
    /// from the renormalised top-p distribution.
    pub fn sample(logits: &[f32], temperature: f32, top_p: f32, key: u64) -> Pick {
        let scores: Vec<Option<f32>> = if temperature <= 0.0 {
            logits.iter().map(|&z| Some(z)).collect()
        } else {
            let (e, _) = weights(logits, temperature);
            let t = threshold(&e, top_p);
            logits
                .iter()
                .zip(&e)
                .enumerate()
                .map(|(i, (&z, &w))| {
                    (w >= t).then(|| z / temperature + gumbel(philox(key, [i as u32, 0, 0, 0])[0]))
                })
                .collect()
        };
        let (mut token, mut best, mut second, mut kept) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY, 0);
        for (i, s) in scores.iter().enumerate() {
            let Some(s) = *s else { continue };
            kept += 1;
            if s > best {
                second = best;
                best = s;
                token = i;
            } else if s > second {
                second = s;
            }
        }
        Pick { token: token as u32, kept, margin: best - second }
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use crate::ops::testing::*;

    #[test]
    fn greedy_is_the_first_argmax() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.9];
        assert_eq!(sample(&logits, 0.0, 1.0, 7).token, 1);
        assert_eq!(sample(&logits, 0.0, 0.3, 7).token, 1, "top-p does not change greedy decoding");
    }

    #[test]
    fn the_threshold_keeps_the_smallest_set_that_reaches_top_p() {
        for seed in 0..20u64 {
            let logits = to_f32(&randn(300, seed));
            let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = logits.iter().map(|z| (z - m).exp()).collect();
            for top_p in [0.05f32, 0.3, 0.5, 0.9, 0.99] {
                let t = threshold(&e, top_p);
                let mut sorted = e.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let total: f64 = sorted.iter().map(|&v| f64::from(v)).sum();
                // The smallest prefix of the sorted weights whose sum reaches top_p.
                let (mut acc, mut count) = (0.0, 0);
                while acc < f64::from(top_p) * total {
                    acc += f64::from(sorted[count]);
                    count += 1;
                }
                let kept = e.iter().filter(|&&v| v >= t).count();
                assert_eq!(kept, count, "seed {seed}, top-p {top_p}");
            }
        }
    }

    #[test]
    fn gumbel_max_draws_from_the_renormalised_top_p_distribution() {
        let logits = [1.0f32, 2.0, 0.0, 2.5, -3.0];
        let (t, p) = (0.7f32, 0.95f32);
        let e: Vec<f64> = logits.iter().map(|&z| f64::from(z / t).exp()).collect();
        let total: f64 = e.iter().sum();
        // Probabilities 0.61, 0.30, 0.07, 0.02, 0.0002 for tokens 3, 1, 0, 2, 4: the first three reach 0.95.
        let kept = [0usize, 1, 3];
        let kept_mass: f64 = kept.iter().map(|&i| e[i]).sum();
        let draws = 20_000u64;
        let mut counts = [0usize; 5];
        for d in 0..draws {
            counts[sample(&logits, t, p, crate::rng::derive_key(3, &[d])).token as usize] += 1;
        }
        assert_eq!(counts[2] + counts[4], 0, "cut tokens were drawn: {counts:?}");
        for &i in &kept {
            let want = e[i] / kept_mass;
            let got = counts[i] as f64 / draws as f64;
            assert!((got - want).abs() < 0.015, "token {i}: {got} vs {want} (total {total})");
        }
    }

    #[test]
    fn perception_weighs_the_cells_before() {
        let (dim, width) = (3, 2);
        let kernel = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        let cells = [1.0, 1.0, 1.0, 2.0, 2.0, 2.0];
        assert_eq!(perceive(&cells[..dim], &kernel, &[0.0; 3], width), vec![1.0, 2.0, 3.0]);
        assert_eq!(perceive(&cells, &kernel, &[0.5; 3], width), vec![12.5, 24.5, 36.5]);
    }
}
