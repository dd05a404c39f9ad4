//! Causal multi-head self-attention, flash style: the forward keeps a running softmax per query row and
//! stores only O and the row log-sum-exp; the backward recomputes the probabilities tile by tile, so
//! memory stays linear in the sequence length. Dropout on the attention probabilities uses a mask
//! regenerated from the counter-based RNG (never stored).
//!
//! Layouts: `qkv` (and its gradient `dqkv`) is `[batch * seq_len, 3 * heads * head_dim]` row-major, each
//! row a token's queries, keys and values as the fused projection X [W_q; W_k; W_v]^T produces them
//! (RoPE already applied to the queries and keys); `o` (and `d_o`) is `[batch * seq_len, heads * head_dim]`;
//! `lse` and `delta` are `[batch, heads, seq_len]`. Scores are scaled by 1/sqrt(head_dim) and key j attends to query i when
//! j <= i within the same sequence.
//!
//! Each pass comes in several blockings with the same outputs ([`Blocking`]), tuned per device.

use anyhow::{ensure, Context, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::tune::{self, KernelVariant, VariantTable};
use crate::gpu::{grid_1d, Gpu, GpuTensor, Recorder, Shader, WgslConst};
use crate::ops::matmul::{Precision, COOP_FEATURES};
use crate::rng::{philox, unit_f32};

/// `shaders/attention_common.wgsl` followed by `shaders/<file>`.
macro_rules! concat_common {
    ($file:literal) => {
        concat!(
            include_str!("../../shaders/attention_common.wgsl"),
            include_str!(concat!("../../shaders/", $file))
        )
    };
}

/// The constants every attention kernel file is given, then those that set one build of a file apart
/// (the keys per tile of `shaders/attention_flash.wgsl`, the head width of `shaders/attention_coop.wgsl`).
macro_rules! kernel_consts {
    ($($name:literal = $value:expr),*) => {
        &[
            ("BLOCK", WgslConst::U32(BLOCK)),
            ("WIDE_Q", WgslConst::U32(WIDE_BLOCK)),
            ("WIDE_K", WgslConst::U32(WIDE_KEYS)),
            ("THREADS", WgslConst::U32(THREADS)),
            ("DROPOUT_DOMAIN", WgslConst::U32(DROPOUT_DOMAIN)),
            $(($name, WgslConst::U32($value)),)*
        ]
    };
}

/// Constants the kernels share with the host.
const CONSTS: &[(&str, WgslConst)] = kernel_consts!();

/// The 16 x 16 kernels, forward and backward.
pub const SHADER: Shader =
    Shader::new("attention", concat_common!("attention.wgsl")).with_rng().with_consts(CONSTS);
/// The forward and the dK/dV and dQ kernels on 64-row blocks.
pub const WIDE_SHADER: Shader =
    Shader::new("attention_wide", concat_common!("attention_wide.wgsl")).with_rng().with_consts(CONSTS);

/// `shaders/attention_flash.wgsl` after the common file, with its row sums from `shaders/<rows>`.
macro_rules! flash_source {
    ($rows:literal) => {
        concat!(
            include_str!("../../shaders/attention_common.wgsl"),
            include_str!("../../shaders/attention_flash.wgsl"),
            include_str!(concat!("../../shaders/", $rows))
        )
    };
}

/// Rows (queries; keys for dK and dV) per workgroup of the flash kernels (4 invocations per row).
const FLASH_QUERIES: u32 = 64;
/// Keys per streamed tile of the flash builds: the portable one and the one for 32 KiB of workgroup
/// memory. Summing rows through subgroups frees half the memory, which holds tiles of twice the keys.
const FLASH_KEYS: u32 = 8;
const FLASH32K_KEYS: u32 = 16;
/// The flash kernels streaming tiles of 8 keys (or queries) (16 KiB of workgroup memory).
pub const FLASH_SHADER: Shader = Shader::new("attention_flash", flash_source!("attention_flash_rows.wgsl"))
    .with_rng()
    .with_consts(kernel_consts!("FLASH_KEYS" = FLASH_KEYS));
/// The flash kernels streaming tiles of 16 (32 KiB of workgroup memory).
pub const FLASH32K_SHADER: Shader =
    Shader::new("attention_flash32k", flash_source!("attention_flash_rows.wgsl"))
        .with_rng()
        .with_consts(kernel_consts!("FLASH_KEYS" = FLASH32K_KEYS));
/// The flash kernels summing rows through subgroup shuffles, tiles of 16 (16 KiB).
pub const FLASH_SUBGROUPS_SHADER: Shader =
    Shader::new("attention_flash+subgroups", flash_source!("attention_flash_rows_subgroups.wgsl"))
        .with_rng()
        .with_consts(kernel_consts!("FLASH_KEYS" = 2 * FLASH_KEYS));
/// The flash kernels summing rows through subgroup shuffles, tiles of 32 (32 KiB).
pub const FLASH32K_SUBGROUPS_SHADER: Shader =
    Shader::new("attention_flash32k+subgroups", flash_source!("attention_flash_rows_subgroups.wgsl"))
        .with_rng()
        .with_consts(kernel_consts!("FLASH_KEYS" = 2 * FLASH32K_KEYS));

/// `shaders/attention_coop.wgsl` with its cooperative operations (`shaders/attention_coop_ops.wgsl`)
/// after the common file; the line of directives stays before the constants.
const COOP_SOURCE: &str = concat!(
    "enable f16, wgpu_cooperative_matrix;\n",
    include_str!("../../shaders/attention_common.wgsl"),
    include_str!("../../shaders/attention_coop_ops.wgsl"),
    include_str!("../../shaders/attention_coop.wgsl")
);

/// Head dimensions the narrower cooperative-matrix build holds; wider heads take the other one.
const COOP_NARROW: u32 = 64;
/// The cooperative-matrix kernels for head_dim up to 64 (24 KiB of workgroup memory) and up to 128
/// (32 KiB).
pub const COOP_SHADER: Shader = Shader::new("attention_coop", COOP_SOURCE)
    .with_rng()
    .with_consts(kernel_consts!("COOP_PITCH" = COOP_NARROW));
pub const COOP128_SHADER: Shader = Shader::new("attention_coop128", COOP_SOURCE)
    .with_rng()
    .with_consts(kernel_consts!("COOP_PITCH" = MAX_HEAD_DIM));
/// Rows per workgroup and per streamed tile of the cooperative-matrix kernels.
const COOP_ROWS: u32 = 64;
const COOP_COLS: u32 = 32;

/// Queries (and keys) per tile in the 16 x 16 kernels.
const BLOCK: u32 = 16;
/// Rows (queries, or keys for dK and dV) per workgroup of the wide kernels, and columns per block.
const WIDE_BLOCK: u32 = 64;
const WIDE_KEYS: u32 = 32;
/// Invocations per workgroup of every attention kernel; `backward_delta` gives each one row.
const THREADS: u32 = 256;

/// How the attention kernels block their work. Every blocking gives the same outputs, so any
/// backward follows any forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocking {
    /// 16 x 16 blocks, one (query, key) pair per invocation (`shaders/attention.wgsl`).
    Block16,
    /// 64 rows (queries; keys for dK and dV) x 32 columns per block, 8 pairs per invocation
    /// (`shaders/attention_wide.wgsl`).
    Wide64,
    /// Like FlashAttention-2: 64 rows per workgroup (queries; keys for dK and dV) held in registers
    /// with their accumulators, tiles of 8 columns streaming through 16 KiB of workgroup memory
    /// (`shaders/attention_flash.wgsl`).
    Flash,
    /// [`Blocking::Flash`] with tiles of 16 keys, where the adapter allows 32 KiB of workgroup memory.
    Flash32k,
    /// [`Blocking::Flash`] with each row's partial scores summed by subgroup shuffles instead of in
    /// workgroup memory, which then holds tiles of 16 keys in 16 KiB (`shaders/attention_flash_rows_subgroups.wgsl`).
    FlashSubgroups,
    /// [`Blocking::FlashSubgroups`] with tiles of 32 keys in 32 KiB.
    Flash32kSubgroups,
    /// Both products of every pass on 16 x 16 x 16 cooperative matrices (tensor cores), f16 operands and
    /// f32 sums: 64 rows per workgroup, one block of 16 per subgroup, tiles of 32 columns
    /// (`shaders/attention_coop.wgsl`). For [`Precision::F16`] only: it is checked against the f32
    /// kernels at f16's tolerance, and never tuned among them.
    Coop16,
}

/// Every blocking; `NCALM_ATTENTION` forces one.
pub static BLOCKINGS: VariantTable<Blocking> = VariantTable::new(
    "NCALM_ATTENTION",
    &[
        KernelVariant {
            variant: Blocking::Block16,
            name: "block16",
            shaders: &[SHADER],
            tile: [BLOCK, BLOCK],
            requires: wgpu::Features::empty(),
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::Wide64,
            name: "wide64",
            shaders: &[WIDE_SHADER],
            tile: [WIDE_BLOCK, WIDE_KEYS],
            requires: wgpu::Features::empty(),
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::Flash,
            name: "flash",
            shaders: &[FLASH_SHADER],
            tile: [FLASH_QUERIES, FLASH_KEYS],
            requires: wgpu::Features::empty(),
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::Flash32k,
            name: "flash32k",
            shaders: &[FLASH32K_SHADER],
            tile: [FLASH_QUERIES, FLASH32K_KEYS],
            requires: wgpu::Features::empty(),
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::FlashSubgroups,
            name: "flash+subgroups",
            shaders: &[FLASH_SUBGROUPS_SHADER],
            tile: [FLASH_QUERIES, 2 * FLASH_KEYS],
            requires: wgpu::Features::SUBGROUP,
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::Flash32kSubgroups,
            name: "flash32k+subgroups",
            shaders: &[FLASH32K_SUBGROUPS_SHADER],
            tile: [FLASH_QUERIES, 2 * FLASH32K_KEYS],
            requires: wgpu::Features::SUBGROUP,
            tunable: true,
        },
        KernelVariant {
            variant: Blocking::Coop16,
            name: "coop16",
            shaders: &[COOP_SHADER, COOP128_SHADER],
            tile: [COOP_ROWS, COOP_COLS],
            requires: COOP_FEATURES,
            tunable: false,
        },
    ],
);

/// The passes a blocking is tuned for separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPass {
    Forward,
    /// dK and dV, then dQ.
    Backward,
}

impl Blocking {
    /// Every blocking, in the order tuning times them.
    pub fn all() -> Vec<Blocking> {
        BLOCKINGS.tunable()
    }

    pub fn name(&self) -> &'static str {
        BLOCKINGS.entry(*self).name
    }

    /// The shader of this blocking for `shape`: the cooperative-matrix kernels come in two widths of
    /// the head.
    fn shader(&self, shape: &AttentionShape) -> &'static Shader {
        match self {
            Blocking::Coop16 if shape.head_dim > COOP_NARROW => &COOP128_SHADER,
            _ => &BLOCKINGS.entry(*self).shaders[0],
        }
    }

    /// One workgroup per (block of rows, sequence x head).
    fn grid(&self, shape: &AttentionShape) -> [u32; 3] {
        let rows = BLOCKINGS.entry(*self).tile[0];
        [shape.seq_len.div_ceil(rows), shape.batch * shape.heads, 1]
    }

    /// The blocking `pass` uses: forced by `NCALM_ATTENTION` (a blocking's name), tuned on
    /// this adapter among those that fit its workgroup memory (`gpu::tune`), or `Block16`, the one measured on GPUs so far;
    /// on CPU adapters, where tuning is off, `Wide64`, whose fewer barriers per key cost lavapipe about
    /// half the time (docs/performance.md). The flash blockings are never a fallback: only tuning on
    /// the device chooses them.
    pub fn pick(gpu: &Gpu, pass: AttentionPass, shape: &AttentionShape) -> Result<Blocking> {
        let mut trial = |blocking| trial(gpu, pass, shape, blocking);
        let fallback = if gpu.is_cpu() { Blocking::Wide64 } else { Blocking::Block16 };
        BLOCKINGS.pick(gpu, &tuning_class(pass, shape), fallback, &mut trial)
    }

    /// The blocking `pass` uses in `precision`: [`pick`](Self::pick)'s, or with [`Precision::F16`] on
    /// an adapter with cooperative matrices, `Coop16` where tuning on it finds that it agrees with
    /// block16 at f16's tolerance and runs faster than that f32 blocking; not where `NCALM_ATTENTION`
    /// forces a blocking. Where `Coop16` cannot run, says why once per process.
    pub fn pick_in(
        gpu: &Gpu,
        pass: AttentionPass,
        shape: &AttentionShape,
        precision: Precision,
    ) -> Result<Blocking> {
        let single = Blocking::pick(gpu, pass, shape)?;
        // A blocking forced by `NCALM_ATTENTION` runs in either precision.
        if precision == Precision::F32 || BLOCKINGS.forced().is_some() {
            return Ok(single);
        }
        if let Some(why) = cooperative_shortfall(gpu) {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                eprintln!("note: f16 attention runs in f32: the cooperative-matrix kernel coop16 {why}")
            });
            return Ok(single);
        }
        let mut trial = |blocking| trial(gpu, pass, shape, blocking);
        let class = format!("{} f16", tuning_class(pass, shape));
        BLOCKINGS.pick_among(gpu, &class, &[single, Blocking::Coop16], single, &mut trial)
    }
}

/// Why `gpu` cannot run the cooperative-matrix kernels (`Coop16`); `None` where it can.
pub fn cooperative_shortfall(gpu: &Gpu) -> Option<String> {
    BLOCKINGS.shortfall(gpu, Blocking::Coop16)
}

/// Whether `gpu` runs the cooperative-matrix kernels, in words (`ncalm info`).
pub fn cooperative_report(gpu: &Gpu) -> String {
    match cooperative_shortfall(gpu) {
        None => "coop16 runs (f16 training chooses it where tuning finds it agrees and is faster)".into(),
        Some(why) => format!("coop16 cannot run: it {why}"),
    }
}

/// The tuning class of `pass` at `shape`: sequences x heads and the length, each rounded up to a power
/// of two, and the head dimension.
fn tuning_class(pass: AttentionPass, shape: &AttentionShape) -> String {
    let pass_name = match pass {
        AttentionPass::Forward => "forward",
        AttentionPass::Backward => "backward",
    };
    format!(
        "attention {pass_name} bh{} t{} d{}",
        (shape.batch * shape.heads).next_power_of_two(),
        shape.seq_len.next_power_of_two(),
        shape.head_dim
    )
}

/// Tuning's trial of `blocking`: checked against block16 (the blocking measured on GPUs first), then
/// timed.
fn trial(gpu: &Gpu, pass: AttentionPass, shape: &AttentionShape, blocking: Blocking) -> Result<tune::Trial> {
    let reference = Blocking::Block16;
    if blocking != reference {
        if let Some(why) = disagreement(gpu, pass, shape, reference, blocking)? {
            return Ok(tune::Trial::Disagrees(why));
        }
    }
    Ok(tune::Trial::Seconds(time_pass(gpu, pass, shape, blocking)?))
}

/// How far a blocking may differ from the f32 reference, relative to each output's largest magnitude:
/// far above f32 reordering (or f16 rounding, for `Coop16`), far below a wrong result.
pub fn agreement(blocking: Blocking) -> f32 {
    match blocking {
        Blocking::Coop16 => crate::ops::matmul::AGREEMENT_F16,
        _ => 1e-3,
    }
}

/// How `pass` with `candidate` differs from `reference` at `shape` on the same random inputs, if it
/// does: the check tuning runs before timing a blocking. The forward compares O and the row
/// log-sum-exp; the backward, from the reference's forward, compares dQ, dK and dV (as one dqkv).
pub fn disagreement(
    gpu: &Gpu,
    pass: AttentionPass,
    shape: &AttentionShape,
    reference: Blocking,
    candidate: Blocking,
) -> Result<Option<String>> {
    let n = shape.activation_len();
    let random = |len: usize, seed: u64, label: &str| -> Result<GpuTensor> {
        gpu.upload(&crate::ops::testing::to_f32(&crate::ops::testing::randn(len, seed)), label)
    };
    let (qkv, d_o) = (random(3 * n, 1, "check qkv")?, random(n, 4, "check do")?);
    let rows = shape.row_stat_len();
    let outputs = |label: &str, count: usize, len: usize| -> Result<Vec<GpuTensor>> {
        (0..count).map(|i| gpu.tensor(len, &format!("check {label} {i}"))).collect()
    };
    let cache = crate::gpu::KernelCache::default();
    let mut rec = Recorder::new(gpu, &cache);
    let compared: Vec<[GpuTensor; 2]> = match pass {
        AttentionPass::Forward => {
            let (o, lse) = (outputs("o", 2, n)?, outputs("lse", 2, rows)?);
            for (i, blocking) in [reference, candidate].into_iter().enumerate() {
                forward_with(&mut rec, &qkv, &o[i], &lse[i], shape, None, blocking)?;
            }
            vec![[o[0].clone(), o[1].clone()], [lse[0].clone(), lse[1].clone()]]
        }
        AttentionPass::Backward => {
            let (o, lse) = (gpu.tensor(n, "check o")?, gpu.tensor(rows, "check lse")?);
            forward_with(&mut rec, &qkv, &o, &lse, shape, None, reference)?;
            let dqkv = outputs("dqkv", 2, 3 * n)?;
            let delta = outputs("delta", 2, rows)?;
            for (i, blocking) in [reference, candidate].into_iter().enumerate() {
                let t = BackwardTensors {
                    qkv: &qkv,
                    o: &o,
                    lse: &lse,
                    d_o: &d_o,
                    dqkv: &dqkv[i],
                    delta: &delta[i],
                };
                backward_with(&mut rec, &t, shape, None, blocking)?;
            }
            vec![[dqkv[0].clone(), dqkv[1].clone()]]
        }
    };
    rec.submit();
    for [want, got] in &compared {
        let label = &want.label;
        if let Some(why) =
            tune::disagreement(&gpu.read::<f32>(want)?, &gpu.read::<f32>(got)?, agreement(candidate))
        {
            return Ok(Some(format!("{}: {why}", label.trim_start_matches("check ").trim_end_matches(" 0"))));
        }
    }
    Ok(None)
}

/// Seconds per `pass` with `blocking` at `shape`, on buffers of its own.
fn time_pass(gpu: &Gpu, pass: AttentionPass, shape: &AttentionShape, blocking: Blocking) -> Result<f64> {
    let n = shape.activation_len();
    let (qkv, dqkv) = (gpu.tensor(3 * n, "tune qkv")?, gpu.tensor(3 * n, "tune dqkv")?);
    let (o, d_o) = (gpu.tensor(n, "tune o")?, gpu.tensor(n, "tune do")?);
    let (lse, delta) =
        (gpu.tensor(shape.row_stat_len(), "tune lse")?, gpu.tensor(shape.row_stat_len(), "tune delta")?);
    tune::best_time(gpu, &|rec| match pass {
        AttentionPass::Forward => forward_with(rec, &qkv, &o, &lse, shape, None, blocking),
        AttentionPass::Backward => {
            let t = BackwardTensors { qkv: &qkv, o: &o, lse: &lse, d_o: &d_o, dqkv: &dqkv, delta: &delta };
            backward_with(rec, &t, shape, None, blocking)
        }
    })
}

/// The largest head dimension the kernels hold (their per-invocation accumulators are sized for it).
pub const MAX_HEAD_DIM: u32 = 128;
/// The last Philox counter word of the dropout mask, keeping its stream apart from other uses of a key.
const DROPOUT_DOMAIN: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: u32,
    pub seq_len: u32,
    pub heads: u32,
    pub head_dim: u32,
}

impl AttentionShape {
    /// Elements of o and its gradient, and of each of q, k and v.
    pub fn activation_len(&self) -> usize {
        self.batch as usize * self.seq_len as usize * self.heads as usize * self.head_dim as usize
    }

    /// Elements of qkv and its gradient: q, k and v side by side in each token's row.
    pub fn qkv_len(&self) -> usize {
        3 * self.activation_len()
    }

    /// Elements of `lse` and `delta`: one per (sequence, head, position).
    pub fn row_stat_len(&self) -> usize {
        self.batch as usize * self.heads as usize * self.seq_len as usize
    }

    fn scale(&self) -> f64 {
        1.0 / f64::from(self.head_dim).sqrt()
    }
}

/// Dropout on the attention probabilities: each is dropped with probability `p` (in [0, 1)) and the kept
/// ones are scaled by 1 / (1 - p). `key` selects the mask; callers derive a fresh one per step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub key: u64,
}

/// Whether the probability of (query i, key j) in head h of sequence b survives dropout: the mask both
/// the kernels and the reference use.
pub fn keep(key: u64, b: u32, h: u32, heads: u32, i: u32, j: u32, p: f32) -> bool {
    let words = philox(key, [i, j / 4, b * heads + h, DROPOUT_DOMAIN]);
    unit_f32(words[(j % 4) as usize]) >= p
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
    drop_p: f32,
    keep_scale: f32,
    dropout: u32,
    key_lo: u32,
    key_hi: u32,
    _pad: [u32; 2],
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params {
        batch,
        seq_len,
        heads,
        head_dim,
        scale,
        drop_p,
        keep_scale,
        dropout,
        key_lo,
        key_hi
    })
}

impl Params {
    fn new(shape: &AttentionShape, dropout: Option<Dropout>) -> Self {
        let d = dropout.unwrap_or(Dropout { p: 0.0, key: 0 });
        Self {
            batch: shape.batch,
            seq_len: shape.seq_len,
            heads: shape.heads,
            head_dim: shape.head_dim,
            scale: shape.scale() as f32,
            drop_p: d.p,
            keep_scale: 1.0 / (1.0 - d.p),
            dropout: u32::from(dropout.is_some()),
            key_lo: d.key as u32,
            key_hi: (d.key >> 32) as u32,
            _pad: [0; 2],
        }
    }
}

fn check_shape(shape: &AttentionShape, dropout: Option<Dropout>) -> Result<()> {
    ensure!(
        (1..=MAX_HEAD_DIM).contains(&shape.head_dim),
        "attention: head_dim {} is outside 1..={MAX_HEAD_DIM}",
        shape.head_dim
    );
    let sequences_by_heads = u64::from(shape.batch) * u64::from(shape.heads);
    ensure!(
        sequences_by_heads <= 65_535,
        "attention: batch {} x heads {} = {sequences_by_heads} exceeds 65535 workgroups in one dimension",
        shape.batch,
        shape.heads
    );
    ensure!(
        shape.seq_len.div_ceil(BLOCK) <= 65_535,
        "attention: seq_len {} needs more than 65535 blocks of {BLOCK}",
        shape.seq_len
    );
    if let Some(d) = dropout {
        ensure!((0.0..1.0).contains(&d.p), "attention: dropout probability {} is outside [0, 1)", d.p);
    }
    Ok(())
}

fn check_len(name: &str, t: &GpuTensor, want: usize, what: &str) -> Result<()> {
    ensure!(t.len == want, "attention: {name} has {} elements, expected {want} ({what})", t.len);
    Ok(())
}

/// (query, key) pairs a causal pass visits, over all batches and heads.
fn causal_pairs(shape: &AttentionShape) -> f64 {
    let t = f64::from(shape.seq_len);
    f64::from(shape.batch) * f64::from(shape.heads) * t * (t + 1.0) / 2.0
}

/// O = softmax(s Q K^T + causal mask) (with dropout) V, and LSE per query row (kept for the backward),
/// with the blocking [`Blocking::pick`] chooses; Q, K and V are the thirds of each row of `qkv`. `o`
/// and `lse` must not overlap `qkv`: workgroups read rows other than the ones they write.
pub fn forward(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    o: &GpuTensor,
    lse: &GpuTensor,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
) -> Result<()> {
    let blocking = Blocking::pick(rec.gpu(), AttentionPass::Forward, shape)?;
    forward_with(rec, qkv, o, lse, shape, dropout, blocking)
}

/// [`forward`] in `precision`: with [`Precision::F16`], on cooperative matrices where
/// [`Blocking::pick_in`] finds them faster.
#[allow(clippy::too_many_arguments)]
pub fn forward_in(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    o: &GpuTensor,
    lse: &GpuTensor,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    precision: Precision,
) -> Result<()> {
    let blocking = Blocking::pick_in(rec.gpu(), AttentionPass::Forward, shape, precision)?;
    forward_with(rec, qkv, o, lse, shape, dropout, blocking)
}

/// [`forward`] with a given blocking (for tests and benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    o: &GpuTensor,
    lse: &GpuTensor,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    blocking: Blocking,
) -> Result<()> {
    BLOCKINGS.check_supported(rec.gpu(), blocking).context("attention forward")?;
    forward_on(rec, qkv, o, lse, shape, dropout, blocking, blocking.shader(shape))
}

/// [`forward_with`] on `shader`, a build of `blocking`'s kernels that the caller supplies and that is
/// not checked against the device: how a test runs a kernel's own logic with some of its operations
/// replaced (the cooperative ones emulated in plain WGSL, on an adapter without them).
#[allow(clippy::too_many_arguments)]
pub fn forward_on(
    rec: &mut Recorder,
    qkv: &GpuTensor,
    o: &GpuTensor,
    lse: &GpuTensor,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    blocking: Blocking,
    shader: &'static Shader,
) -> Result<()> {
    check_shape(shape, dropout)?;
    check_len("qkv", qkv, shape.qkv_len(), "batch * seq_len * 3 * heads * head_dim")?;
    check_len("o", o, shape.activation_len(), "batch * seq_len * heads * head_dim")?;
    check_len("lse", lse, shape.row_stat_len(), "batch * heads * seq_len")?;
    let params = Params::new(shape, dropout);
    // Causal: QK^T and PV over half the T x T scores.
    let pair_work = causal_pairs(shape) * f64::from(shape.head_dim);
    rec.set_cost(4.0 * pair_work, 4.0 * 4.0 * shape.activation_len() as f64);
    rec.dispatch(shader, "forward", &params, &[qkv, o, lse], blocking.grid(shape))
}

/// The tensors of the backward pass: the forward's input `qkv`, its outputs `o` and `lse`, the
/// incoming gradient `d_o`, the gradient `dqkv` it overwrites (dq, dk and dv in `qkv`'s layout), and
/// `delta`, scratch of `batch * heads * seq_len` floats.
#[derive(Clone, Copy)]
pub struct BackwardTensors<'a> {
    pub qkv: &'a GpuTensor,
    pub o: &'a GpuTensor,
    pub lse: &'a GpuTensor,
    pub d_o: &'a GpuTensor,
    pub dqkv: &'a GpuTensor,
    pub delta: &'a GpuTensor,
}

/// dq, dk, dv (as `dqkv`) from d_o (docs/gradients.md), overwriting them; `o` and `lse` are the
/// forward's outputs and `dropout` must be the forward's. No output (dqkv, delta) may overlap another
/// tensor: each kernel reads rows that others write.
pub fn backward(
    rec: &mut Recorder,
    t: &BackwardTensors,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
) -> Result<()> {
    let blocking = Blocking::pick(rec.gpu(), AttentionPass::Backward, shape)?;
    backward_with(rec, t, shape, dropout, blocking)
}

/// [`backward`] in `precision`, as [`forward_in`].
pub fn backward_in(
    rec: &mut Recorder,
    t: &BackwardTensors,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    precision: Precision,
) -> Result<()> {
    let blocking = Blocking::pick_in(rec.gpu(), AttentionPass::Backward, shape, precision)?;
    backward_with(rec, t, shape, dropout, blocking)
}

/// [`backward`] with a given blocking (for tests and benchmarks).
pub fn backward_with(
    rec: &mut Recorder,
    t: &BackwardTensors,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    blocking: Blocking,
) -> Result<()> {
    BLOCKINGS.check_supported(rec.gpu(), blocking).context("attention backward")?;
    backward_on(rec, t, shape, dropout, blocking, blocking.shader(shape))
}

/// [`backward_with`] on a `shader` the caller supplies, as [`forward_on`].
pub fn backward_on(
    rec: &mut Recorder,
    t: &BackwardTensors,
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    blocking: Blocking,
    shader: &'static Shader,
) -> Result<()> {
    check_shape(shape, dropout)?;
    let BackwardTensors { qkv, o, lse, d_o, dqkv, delta } = *t;
    for (name, t) in [("qkv", qkv), ("dqkv", dqkv)] {
        check_len(name, t, shape.qkv_len(), "batch * seq_len * 3 * heads * head_dim")?;
    }
    for (name, t) in [("o", o), ("d_o", d_o)] {
        check_len(name, t, shape.activation_len(), "batch * seq_len * heads * head_dim")?;
    }
    let per_row = "batch * heads * seq_len";
    check_len("lse", lse, shape.row_stat_len(), per_row)?;
    check_len("delta", delta, shape.row_stat_len(), per_row)?;
    let params = Params::new(shape, dropout);
    // Binding order shared by all entry points; each binds only what it uses.
    let tensors = [qkv, o, lse, d_o, dqkv, delta];
    let rows = shape.row_stat_len() as u32;
    rec.dispatch(&SHADER, "backward_delta", &params, &tensors, grid_1d(rows.div_ceil(THREADS)))?;
    // dK and dV: one workgroup per block of keys; the grid has the same shape as the query tiling.
    // dK/dV recomputes QK^T and forms dV, dP and dK; dQ recomputes QK^T and dP and forms dQ.
    let pair_work = causal_pairs(shape) * f64::from(shape.head_dim);
    let grid = blocking.grid(shape);
    rec.set_cost(8.0 * pair_work, 4.0 * 6.0 * shape.activation_len() as f64);
    rec.dispatch(shader, "backward_dkdv", &params, &tensors, grid)?;
    rec.set_cost(6.0 * pair_work, 4.0 * 5.0 * shape.activation_len() as f64);
    rec.dispatch(shader, "backward_dq", &params, &tensors, grid)
}

/// The plain-Rust reference (f64), materialising the full score matrix per head.
pub mod reference {
    use super::{keep, AttentionShape, Dropout};

    /// The dropout factor M_ij / (1 - p) of one pair (1 without dropout).
    fn dropout_factor(
        dropout: Option<Dropout>,
        shape: &AttentionShape,
        b: u32,
        h: u32,
        i: u32,
        j: u32,
    ) -> f64 {
        match dropout {
            None => 1.0,
            Some(d) if keep(d.key, b, h, shape.heads, i, j, d.p) => 1.0 / (1.0 - f64::from(d.p)),
            Some(_) => 0.0,
        }
    }

    /// Offset of head h of token t in sequence b (the first of its head_dim elements).
    fn at(shape: &AttentionShape, b: u32, t: u32, h: u32) -> usize {
        ((b as usize * shape.seq_len as usize + t as usize) * shape.heads as usize + h as usize)
            * shape.head_dim as usize
    }

    fn row_stat(shape: &AttentionShape, b: u32, h: u32, t: u32) -> usize {
        (b as usize * shape.heads as usize + h as usize) * shape.seq_len as usize + t as usize
    }

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// (o, lse).
    pub fn forward(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        shape: &AttentionShape,
        dropout: Option<Dropout>,
    ) -> (Vec<f64>, Vec<f64>) {
        let d = shape.head_dim as usize;
        let scale = shape.scale();
        let mut o = vec![0.0; shape.activation_len()];
        let mut lse = vec![0.0; shape.row_stat_len()];
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                for i in 0..shape.seq_len {
                    let qi = &q[at(shape, b, i, h)..][..d];
                    let scores: Vec<f64> =
                        (0..=i).map(|j| scale * dot(qi, &k[at(shape, b, j, h)..][..d])).collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                    lse[row_stat(shape, b, h, i)] = max + sum.ln();
                    let oi = &mut o[at(shape, b, i, h)..][..d];
                    for (j, s) in (0..=i).zip(&scores) {
                        let weight = (s - max).exp() / sum * dropout_factor(dropout, shape, b, h, i, j);
                        for (out, x) in oi.iter_mut().zip(&v[at(shape, b, j, h)..][..d]) {
                            *out += weight * x;
                        }
                    }
                }
            }
        }
        (o, lse)
    }

    /// (dq, dk, dv), from the forward's `o` and `lse`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        o: &[f64],
        lse: &[f64],
        d_o: &[f64],
        shape: &AttentionShape,
        dropout: Option<Dropout>,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = shape.head_dim as usize;
        let scale = shape.scale();
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                for i in 0..shape.seq_len {
                    let row = at(shape, b, i, h);
                    let (qi, doi) = (&q[row..][..d], &d_o[row..][..d]);
                    let delta = dot(doi, &o[row..][..d]);
                    let lse_i = lse[row_stat(shape, b, h, i)];
                    for j in 0..=i {
                        let col = at(shape, b, j, h);
                        let (kj, vj) = (&k[col..][..d], &v[col..][..d]);
                        let prob = (scale * dot(qi, kj) - lse_i).exp();
                        let drop = dropout_factor(dropout, shape, b, h, i, j);
                        let dprob = dot(doi, vj) * drop;
                        let dscore = prob * (dprob - delta);
                        for c in 0..d {
                            dv[col + c] += prob * drop * doi[c];
                            dq[row + c] += scale * dscore * kj[c];
                            dk[col + c] += scale * dscore * qi[c];
                        }
                    }
                }
            }
        }
        (dq, dk, dv)
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::{keep, AttentionShape, Dropout};
    use crate::gpu::KernelNeeds;
    use crate::ops::testing::*;

    const TINY: AttentionShape = AttentionShape { batch: 2, seq_len: 5, heads: 2, head_dim: 3 };

    /// Checks the reference backward against central differences of L = sum(R * o).
    fn check_gradients(dropout: Option<Dropout>, label: &str) {
        let n = TINY.activation_len();
        let (q, k, v, r) = (randn(n, 11), randn(n, 12), randn(n, 13), randn(n, 14));
        let (o, lse) = forward(&q, &k, &v, &TINY, dropout);
        let (dq, dk, dv) = backward(&q, &k, &v, &o, &lse, &r, &TINY, dropout);
        let loss_q = |x: &[f64]| weighted_sum(&r, &forward(x, &k, &v, &TINY, dropout).0);
        let loss_k = |x: &[f64]| weighted_sum(&r, &forward(&q, x, &v, &TINY, dropout).0);
        let loss_v = |x: &[f64]| weighted_sum(&r, &forward(&q, &k, x, &TINY, dropout).0);
        assert_close(&format!("attention dq {label}"), &dq, &finite_difference(&loss_q, &q, 1e-6), 1e-6);
        assert_close(&format!("attention dk {label}"), &dk, &finite_difference(&loss_k, &k, 1e-6), 1e-6);
        assert_close(&format!("attention dv {label}"), &dv, &finite_difference(&loss_v, &v, 1e-6), 1e-6);
    }

    #[test]
    fn reference_gradients_match_finite_differences() {
        check_gradients(None, "");
    }

    #[test]
    fn reference_gradients_with_dropout_match_finite_differences() {
        let dropout = Dropout { p: 0.3, key: 0x5eed };
        // The fixed mask must drop some pairs and keep others, or this would test nothing new.
        let pairs: Vec<bool> = (0..TINY.batch)
            .flat_map(|b| (0..TINY.heads).map(move |h| (b, h)))
            .flat_map(|(b, h)| (0..TINY.seq_len).flat_map(move |i| (0..=i).map(move |j| (b, h, i, j))))
            .map(|(b, h, i, j)| keep(dropout.key, b, h, TINY.heads, i, j, dropout.p))
            .collect();
        assert!(pairs.iter().any(|&k| k) && pairs.iter().any(|&k| !k), "mask {pairs:?}");
        check_gradients(Some(dropout), "dropout");
    }

    #[test]
    fn rows_of_the_reference_are_convex_combinations_without_dropout() {
        // With v constant, every output row equals that constant.
        let n = TINY.activation_len();
        let (q, k) = (randn(n, 1), randn(n, 2));
        let (o, lse) = forward(&q, &k, &vec![0.75; n], &TINY, None);
        assert!(o.iter().all(|x| (x - 0.75).abs() < 1e-12));
        assert!(lse.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn each_blocking_needs_what_its_place_says() {
        // WebGPU guarantees 16 KiB of workgroup memory and 8 storage buffers per shader: block16, wide64
        // and the portable flash build fit them, flash32k needs a device with 32 KiB.
        let needs = |b: super::Blocking| {
            let entry = super::BLOCKINGS.entry(b);
            entry.shaders.iter().fold(KernelNeeds::default(), |n, s| {
                n.max(KernelNeeds::of(s.name, &s.full_source()).unwrap())
            })
        };
        let portable = wgpu::Limits::default();
        assert_eq!(needs(super::Blocking::Block16).shortfall(&portable), None);
        assert_eq!(needs(super::Blocking::Flash).shortfall(&portable), None);
        let flash32k = needs(super::Blocking::Flash32k);
        assert!(flash32k.workgroup_bytes > 16 * 1024 && flash32k.workgroup_bytes <= 32 * 1024);
        assert_eq!(needs(super::Blocking::Wide64).shortfall(&portable), None);
        // Summing rows through subgroups leaves the memory to tiles of twice the keys.
        let flash_subgroups = needs(super::Blocking::FlashSubgroups);
        assert_eq!(flash_subgroups.shortfall(&portable), None);
        assert_eq!(flash_subgroups.workgroup_bytes, needs(super::Blocking::Flash).workgroup_bytes);
        let flash32k_subgroups = needs(super::Blocking::Flash32kSubgroups);
        assert_eq!(flash32k_subgroups.workgroup_bytes, flash32k.workgroup_bytes);
    }

    /// The cooperative-matrix builds multiply in exactly the shape their variant is checked for, fit
    /// 24 and 32 KiB of workgroup memory, and are among the shaders every device-free validation covers.
    #[test]
    fn the_cooperative_kernels_need_one_shape_and_at_most_32_kib() {
        use crate::gpu::CooperativeShape;
        let entry = super::BLOCKINGS.entry(super::Blocking::Coop16);
        for (s, kib) in entry.shaders.iter().zip([24, 32]) {
            let shapes = CooperativeShape::of(s.name, &s.full_source()).unwrap();
            let names: Vec<String> = shapes.iter().map(ToString::to_string).collect();
            assert_eq!(names, ["16x16x16 f16->f32"], "{}", s.name);
            let needs = KernelNeeds::of(s.name, &s.full_source()).unwrap();
            assert_eq!(needs.workgroup_bytes, kib * 1024, "{}", s.name);
            assert!(crate::ops::shaders().any(|t| std::ptr::eq(t, s)), "{} is validated", s.name);
        }
        let narrow = AttentionShape { head_dim: 64, ..TINY };
        let wide = AttentionShape { head_dim: 65, ..TINY };
        assert_eq!(super::Blocking::Coop16.shader(&narrow).name, "attention_coop");
        assert_eq!(super::Blocking::Coop16.shader(&wide).name, "attention_coop128");
    }

    /// Both builds translate to SPIR-V as wgpu's Vulkan backend translates them, every entry point,
    /// validated where SPIRV-Tools is installed.
    #[test]
    fn the_cooperative_kernels_translate_to_valid_spir_v() {
        for s in super::BLOCKINGS.entry(super::Blocking::Coop16).shaders {
            crate::ops::spirv_check::translates(s, &["forward", "backward_dkdv", "backward_dq"]);
        }
    }

    #[test]
    fn columns_side_by_side_split_apart_again() {
        use crate::ops::{cat_columns, split_columns};
        let (q, k, v) = ([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]);
        let qkv = cat_columns(&[&q, &k, &v], 2);
        assert_eq!(qkv, [1, 2, 5, 6, 9, 10, 3, 4, 7, 8, 11, 12]);
        assert_eq!(split_columns(&qkv, 3, 2), [q.to_vec(), k.to_vec(), v.to_vec()]);
    }

    #[test]
    fn the_mask_keeps_one_minus_p_of_the_pairs() {
        for p in [0.1f32, 0.5] {
            let pairs = 200_000u32;
            let kept = (0..pairs).filter(|&n| keep(0xabc, n % 3, n % 5, 5, n / 7, n % 997, p)).count();
            let rate = kept as f64 / f64::from(pairs);
            // Binomial standard deviation is at most 0.0012 here; allow about 5 of them.
            assert!((rate - (1.0 - f64::from(p))).abs() < 0.006, "p {p}: keep rate {rate}");
        }
    }
}
