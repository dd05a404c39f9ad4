//! Matrix multiply for every linear layer, forward and backward, and the column sums that give bias
//! gradients. With W [out, in] (PyTorch's Linear), Y = X W^T is `trans_b`, dX = dY W needs no transpose
//! and dW = dY^T X is `trans_a` (with `accumulate` across micro-batches); db = column sums of dY.

use anyhow::{ensure, Context, Result};
use bytemuck::{Pod, Zeroable};

use crate::gpu::tune::{self, KernelVariant, VariantTable};
use crate::gpu::{grid_1d, Gpu, GpuTensor, Recorder, Shader, WgslConst};
use wgpu::Features;

/// The 64 x 64 kernel, with the split-K sum and the column sums.
const TILE64_WGSL: &str = concat!(
    include_str!("../../../shaders/matmul_common.wgsl"),
    include_str!("../../../shaders/matmul.wgsl")
);
/// The 128 x 128 kernels, each after the prelude they share.
const TILE128_WGSL: &str = concat!(
    include_str!("../../../shaders/matmul_common.wgsl"),
    include_str!("../../../shaders/matmul_operands.wgsl"),
    include_str!("../../../shaders/matmul_tile128.wgsl"),
    include_str!("../../../shaders/matmul_large.wgsl")
);
const PREFETCH_WGSL: &str = concat!(
    include_str!("../../../shaders/matmul_common.wgsl"),
    include_str!("../../../shaders/matmul_operands.wgsl"),
    include_str!("../../../shaders/matmul_tile128.wgsl"),
    include_str!("../../../shaders/matmul_prefetch.wgsl")
);
const HALF_WGSL: &str = concat!(
    "enable f16;\n",
    include_str!("../../../shaders/matmul_common.wgsl"),
    include_str!("../../../shaders/matmul_operands.wgsl"),
    include_str!("../../../shaders/matmul_tile128.wgsl"),
    include_str!("../../../shaders/matmul_half.wgsl")
);

/// The kernel on cooperative matrices (one line of directives, which stays before the constants).
const COOP_WGSL: &str = concat!(
    "enable f16, wgpu_cooperative_matrix;\n",
    include_str!("../../../shaders/matmul_common.wgsl"),
    include_str!("../../../shaders/matmul_operands.wgsl"),
    include_str!("../../../shaders/matmul_coop.wgsl")
);

/// One shader of a variant for one layout of the operands: the transposes are WGSL constants, so no
/// pipeline carries run-time branches on them.
macro_rules! layout_shader {
    ($name:expr, $source:expr, $trans_a:literal, $trans_b:literal, $tile:literal, $tile_k:expr) => {
        Shader {
            name: $name,
            source: $source,
            with_rng: false,
            consts: &[
                ("TRANS_A", WgslConst::Bool($trans_a)),
                ("TRANS_B", WgslConst::Bool($trans_b)),
                ("TILE", WgslConst::U32($tile)),
                ("TILE_K", WgslConst::U32($tile_k)),
                ("THREADS", WgslConst::U32(SUM_COLUMNS)),
                ("SUM_ROWS", WgslConst::U32(SUM_ROWS)),
            ],
        }
    };
}

/// A row of [`VARIANTS`]: tiles of `$tile` x `$tile` staging `$tile_k` of k per step, with shaders
/// `<$shader>_nn`, `_nt`, `_tn` and `_tt` (the index [`layout`] gives).
macro_rules! variant {
    ($variant:expr, $name:literal, $shader:literal, $source:expr, tile: $tile:literal, tile_k: $tile_k:expr,
     requires: $requires:expr, tunable: $tunable:literal) => {
        KernelVariant {
            variant: $variant,
            name: $name,
            shaders: &[
                layout_shader!(concat!($shader, "_nn"), $source, false, false, $tile, $tile_k),
                layout_shader!(concat!($shader, "_nt"), $source, false, true, $tile, $tile_k),
                layout_shader!(concat!($shader, "_tn"), $source, true, false, $tile, $tile_k),
                layout_shader!(concat!($shader, "_tt"), $source, true, true, $tile, $tile_k),
            ],
            tile: [$tile, $tile],
            requires: $requires,
            tunable: $tunable,
        }
    };
}

/// Every matmul kernel; `NCALM_MATMUL` forces one of the tunable ones.
pub static VARIANTS: VariantTable<Variant> = VariantTable::new(
    "NCALM_MATMUL",
    &[
        variant!(Variant::Tile64, "tile64", "matmul", TILE64_WGSL, tile: 64, tile_k: TILE64_K,
                 requires: Features::empty(), tunable: true),
        variant!(Variant::Tile128, "tile128", "matmul_large", TILE128_WGSL, tile: 128, tile_k: 8,
                 requires: Features::empty(), tunable: true),
        variant!(Variant::Tile128K16, "tile128k16", "matmul_large_k16", TILE128_WGSL, tile: 128, tile_k: 16,
                 requires: Features::empty(), tunable: true),
        variant!(Variant::Tile128Prefetch, "tile128prefetch", "matmul_prefetch", PREFETCH_WGSL, tile: 128,
                 tile_k: 16, requires: Features::empty(), tunable: true),
        variant!(Variant::Tile128Half, "tile128half", "matmul_half", HALF_WGSL, tile: 128, tile_k: 16,
                 requires: Features::SHADER_F16, tunable: false),
        variant!(Variant::Coop16, "coop16", "matmul_coop", COOP_WGSL, tile: 64, tile_k: 32,
                 requires: COOP_FEATURES, tunable: false),
    ],
);

/// What the cooperative-matrix kernel needs besides the adapter listing its 16x16x16 f16->f32 shape
/// (which the variant table checks from the shader): the matrices, f16, and subgroups (each subgroup
/// finds its share of the tile by its id).
pub(crate) const COOP_FEATURES: Features =
    Features::EXPERIMENTAL_COOPERATIVE_MATRIX.union(Features::SHADER_F16).union(Features::SUBGROUP);

/// The variants of [`Precision::F16`] products that would take 128-wide tiles: tuning chooses among
/// those the adapter runs, the first where it does not tune.
const HALF_VARIANTS: [Variant; 2] = [Variant::Tile128Half, Variant::Coop16];

/// The k the 64 x 64 kernel stages per step; slices of a split product start at multiples of it.
const TILE64_K: u32 = 16;

/// Index of a layout among a variant's shaders.
fn layout(trans_a: bool, trans_b: bool) -> usize {
    2 * usize::from(trans_a) + usize::from(trans_b)
}

/// The shader of the column sums (in the 64 x 64 kernel's nn build).
fn column_sums_shader() -> &'static Shader {
    &VARIANTS.entry(Variant::Tile64).shaders[layout(false, false)]
}

/// The arithmetic of a product. Like PyTorch's TF32 switch, `F16` trades precision for speed where the
/// caller allows it; it is never chosen by tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// Products large enough for 128-wide tiles take a half-precision variant, operands rounded to f16
    /// (10 bits of mantissa, as TF32, but 5 of exponent): `Variant::Tile128Half` (sums of 16 in f16,
    /// totals in f32), or, where the adapter has cooperative matrices and tuning on it finds it agrees
    /// with the f32 kernels and runs faster, `Variant::Coop16` (every sum in f32, on tensor cores).
    /// Smaller products stay f32. Needs the adapter's SHADER_F16 feature.
    F16,
}

impl Precision {
    pub fn name(&self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

/// The matmul kernels: the same contract, different tiles of C per workgroup ([`VARIANTS`] lists
/// their names, shaders and tiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// 64 x 64 tiles, 4 x 4 per thread (`shaders/matmul.wgsl`): more workgroups for small outputs, and
    /// split-K when the output alone cannot fill the GPU.
    Tile64,
    /// 128 x 128 tiles, 8 x 8 per thread (`shaders/matmul_large.wgsl`), staging 8 of k at a time.
    Tile128,
    /// As `Tile128`, staging 16 of k at a time: half the barriers, twice the workgroup memory.
    Tile128K16,
    /// As `Tile128K16`, with the next slice's loads in flight during the current slice's products
    /// (`shaders/matmul_prefetch.wgsl`). Not yet measured on a GPU; tuning picks it where it wins.
    Tile128Prefetch,
    /// As `Tile128K16` in half precision (`shaders/matmul_half.wgsl`, [`Precision::F16`]); not among
    /// the variants tuning and `NCALM_MATMUL` choose from.
    Tile128Half,
    /// 64 x 64 tiles on cooperative matrices (`shaders/matmul_coop.wgsl`, [`Precision::F16`]): operands
    /// rounded to f16, products and sums in f32 accumulators of 16 x 16, where the adapter lists that
    /// shape (tensor cores). Not yet measured on a GPU; chosen over `Tile128Half` only by tuning on the
    /// device, after its output agrees with the f32 kernels'.
    Coop16,
}

impl Variant {
    /// The variants tuning and `NCALM_MATMUL` choose from.
    pub fn tunable() -> Vec<Variant> {
        VARIANTS.tunable()
    }

    pub fn name(&self) -> &'static str {
        VARIANTS.entry(*self).name
    }

    fn shader(&self, trans_a: bool, trans_b: bool) -> &'static Shader {
        &VARIANTS.entry(*self).shaders[layout(trans_a, trans_b)]
    }

    /// The variant for a shape by rule, where it is not tuned: 128-wide tiles staging 16 of k (the
    /// fastest measured on an H100 at every large shape) once they still give the GPU enough workgroups
    /// to fill it (`LARGE_MIN_WORKGROUPS`).
    pub fn for_rule(m: u32, n: u32) -> Variant {
        if m.div_ceil(128) * n.div_ceil(128) >= LARGE_MIN_WORKGROUPS {
            Variant::Tile128K16
        } else {
            Variant::Tile64
        }
    }
}

/// Workgroups of 128 x 128 from which the larger tile wins. On an H100 (docs/performance.md) it wins from
/// 128 workgroups on (up to 6x), and loses below 16, where the smaller tile splits k instead.
const LARGE_MIN_WORKGROUPS: u32 = 100;

/// Workgroups that split-K aims for when the output alone gives fewer: a few per streaming
/// multiprocessor of a large GPU.
const SPLIT_TARGET_WORKGROUPS: u32 = 512;
/// The least k one slice of a split covers, so that the partial sums stay a small share of the work.
const SPLIT_MIN_K: u32 = 256;

/// Slices of k for a product on 64 x 64 tiles: enough workgroups to fill the GPU when the output is small
/// and k long (the weight gradients dW = dY^T X, whose k is every token of the micro-batch).
fn k_splits(m: u32, n: u32, k: u32) -> u32 {
    let tiles = m.div_ceil(64) * n.div_ceil(64);
    (SPLIT_TARGET_WORKGROUPS / tiles).min(k / SPLIT_MIN_K).clamp(1, 64)
}

/// Threads per workgroup of the sum kernels: one per column of the column sums, one per output element
/// of split-K's sum.
const SUM_COLUMNS: u32 = 256;
/// Rows that one stage-1 workgroup of the column sums adds up.
const SUM_ROWS: u32 = 256;
/// Workgroups per grid dimension that every device supports (WebGPU's minimum).
const MAX_WORKGROUPS: u32 = 65_535;

/// `C[m,n]` = op(A) op(B): A is stored `[m,k]` row-major, or `[k,m]` when `trans_a`; B is stored `[k,n]`, or
/// `[n,k]` when `trans_b`. With `accumulate` the product is added to C instead of replacing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub trans_a: bool,
    pub trans_b: bool,
    pub accumulate: bool,
}

/// `Params` of `shaders/matmul_common.wgsl`; the column sums use m = rows, n = columns.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    accumulate: u32,
    row_blocks: u32,
    k_split: u32,
    splits: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params { m, n, k, has_bias, accumulate, row_blocks, k_split, splits })
}

/// Elements of a `rows x cols` matrix, which must be indexable with the shader's u32 arithmetic.
fn elements(what: &str, rows: u32, cols: u32) -> Result<usize> {
    let len = u64::from(rows) * u64::from(cols);
    ensure!(len <= u64::from(u32::MAX), "{what}: {rows} x {cols} elements exceed 2^32 - 1");
    Ok(len as usize)
}

/// Checks that operand `name` holds `len` elements, its `[rows, cols]` under `shape`.
fn check_operand(
    name: &str,
    t: &GpuTensor,
    len: usize,
    [rows, cols]: [u32; 2],
    shape: &MatmulShape,
) -> Result<()> {
    ensure!(
        t.len == len,
        "matmul: {name} ({}) has {} elements, {shape:?} needs {rows} x {cols}",
        t.label,
        t.len
    );
    Ok(())
}

/// The shape class a tuned choice holds for: the layout and every dimension rounded up to a power of two.
fn tuning_class(shape: &MatmulShape) -> String {
    let layout = |t: bool| if t { 't' } else { 'n' };
    format!(
        "matmul {}{} m{} n{} k{}",
        layout(shape.trans_a),
        layout(shape.trans_b),
        shape.m.next_power_of_two(),
        shape.n.next_power_of_two(),
        shape.k.next_power_of_two()
    )
}

/// Seconds per product of `variant` at `shape`, on buffers of its own.
fn time_variant(gpu: &Gpu, shape: &MatmulShape, variant: Variant) -> Result<f64> {
    let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
    let (a, b, c) =
        (gpu.tensor(m * k, "tune a")?, gpu.tensor(k * n, "tune b")?, gpu.tensor(m * n, "tune c")?);
    tune::best_time(gpu, &|rec| matmul_with(rec, &a, &b, &c, shape, None, variant))
}

/// A product's relative disagreement with the reference beyond which a variant is wrong: f32 sums of
/// any order stay orders of magnitude inside it.
pub const AGREEMENT: f32 = 1e-3;

/// The same for the half-precision variants, against the f32 reference: rounding the operands to f16
/// (2^-11 relative) and, in `Tile128Half`, summing 16 products in f16 leave errors up to ~0.6% of the
/// outputs' RMS (tests/ops_matmul.rs), a few times less of their largest magnitude; a wrong index or
/// a lost step of k is off by several percent of it or more.
pub const AGREEMENT_F16: f32 = 1e-2;

/// The tolerance tuning checks `variant` against the f32 reference at.
pub fn agreement(variant: Variant) -> f32 {
    if HALF_VARIANTS.contains(&variant) {
        AGREEMENT_F16
    } else {
        AGREEMENT
    }
}

/// How the product `candidate` records (into C from A and B) differs from `reference`'s at `shape`,
/// on the same random inputs, if it does: the check tuning runs before timing a variant.
pub fn disagreement(
    gpu: &Gpu,
    shape: &MatmulShape,
    reference: Variant,
    candidate: &dyn Fn(&mut Recorder, &GpuTensor, &GpuTensor, &GpuTensor) -> Result<()>,
) -> Result<Option<String>> {
    disagreement_within(gpu, shape, reference, candidate, AGREEMENT)
}

/// [`disagreement`] beyond `tolerance` (a share of the reference's largest magnitude).
pub fn disagreement_within(
    gpu: &Gpu,
    shape: &MatmulShape,
    reference: Variant,
    candidate: &dyn Fn(&mut Recorder, &GpuTensor, &GpuTensor, &GpuTensor) -> Result<()>,
    tolerance: f32,
) -> Result<Option<String>> {
    let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
    let random = |len: usize, seed: u64| -> Vec<f32> {
        crate::ops::testing::to_f32(&crate::ops::testing::randn(len, seed))
    };
    let (a, b) = (gpu.upload(&random(m * k, 1), "check a")?, gpu.upload(&random(k * n, 2), "check b")?);
    let (want, got) = (gpu.tensor(m * n, "check reference c")?, gpu.tensor(m * n, "check c")?);
    let cache = crate::gpu::KernelCache::default();
    let mut rec = Recorder::new(gpu, &cache);
    matmul_with(&mut rec, &a, &b, &want, shape, None, reference)?;
    candidate(&mut rec, &a, &b, &got)?;
    rec.submit();
    Ok(tune::disagreement(&gpu.read::<f32>(&want)?, &gpu.read::<f32>(&got)?, tolerance))
}

/// Tuning's trial of `variant`: checked against `reference` (at the tolerance of its precision), then
/// timed.
fn trial(gpu: &Gpu, shape: &MatmulShape, variant: Variant, reference: Variant) -> Result<tune::Trial> {
    if variant != reference {
        let candidate = |rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor| {
            matmul_with(rec, a, b, c, shape, None, variant)
        };
        if let Some(why) = disagreement_within(gpu, shape, reference, &candidate, agreement(variant))? {
            return Ok(tune::Trial::Disagrees(why));
        }
    }
    Ok(tune::Trial::Seconds(time_variant(gpu, shape, variant)?))
}

/// The variant for `shape` from `tuner`: recorded, or checked, timed now (the flag) and recorded.
pub fn choose(tuner: &mut tune::Tuner, gpu: &Gpu, shape: &MatmulShape) -> Result<(Variant, bool)> {
    let fallback = Variant::for_rule(shape.m, shape.n);
    let mut trial = |variant| trial(gpu, shape, variant, fallback);
    VARIANTS.choose(tuner, gpu, &tuning_class(shape), fallback, &mut trial)
}

/// The variant [`matmul`] uses: forced by `NCALM_MATMUL` (a name of [`Variant::tunable`]), tuned on
/// this adapter (`gpu::tune`), or by rule.
pub fn pick(gpu: &Gpu, shape: &MatmulShape) -> Result<Variant> {
    let fallback = Variant::for_rule(shape.m, shape.n);
    let mut trial = |variant| trial(gpu, shape, variant, fallback);
    VARIANTS.pick(gpu, &tuning_class(shape), fallback, &mut trial)
}

/// The half-precision variant of a [`Precision::F16`] product at `shape` from `tuner`, among those the
/// adapter runs (`coop16` needs cooperative matrices): recorded, or each checked against the f32 variant
/// [`choose`] gives, timed now (the flag) and recorded. `Tile128Half` where it is the only one.
pub fn choose_half(tuner: &mut tune::Tuner, gpu: &Gpu, shape: &MatmulShape) -> Result<(Variant, bool)> {
    let reference = choose(tuner, gpu, shape)?.0;
    let mut trial = |variant| trial(gpu, shape, variant, reference);
    let class = format!("{} f16", tuning_class(shape));
    VARIANTS.choose_among(tuner, gpu, &class, &HALF_VARIANTS, Variant::Tile128Half, &mut trial)
}

/// The half-precision variant [`matmul_in`] uses for a large [`Precision::F16`] product: `Tile128Half`,
/// unless the adapter also runs `Coop16` and tuning on it (`gpu::tune`) finds `Coop16` agrees with the
/// f32 variant [`pick`] gives and is faster. Where `Coop16` cannot run, says why once per process.
pub fn pick_half(gpu: &Gpu, shape: &MatmulShape) -> Result<Variant> {
    let Some(why) = cooperative_shortfall(gpu) else {
        let reference = pick(gpu, shape)?;
        let mut trial = |variant| trial(gpu, shape, variant, reference);
        let class = format!("{} f16", tuning_class(shape));
        return VARIANTS.pick_among(gpu, &class, &HALF_VARIANTS, Variant::Tile128Half, &mut trial);
    };
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!("note: f16 matmuls run on tile128half: the cooperative-matrix kernel coop16 {why}")
    });
    Ok(Variant::Tile128Half)
}

/// Why `gpu` cannot run the cooperative-matrix kernel (`Coop16`); `None` where it can.
pub fn cooperative_shortfall(gpu: &Gpu) -> Option<String> {
    VARIANTS.shortfall(gpu, Variant::Coop16)
}

/// Whether `gpu` runs the cooperative-matrix kernel, in words (`ncalm info`).
pub fn cooperative_report(gpu: &Gpu) -> String {
    match cooperative_shortfall(gpu) {
        None => "coop16 runs (f16 products choose it where tuning finds it agrees and is faster)".into(),
        Some(why) => format!("coop16 cannot run: it {why}"),
    }
}

/// Records C = op(A) op(B) (+ `bias[n]` added to every row) (+ C when `shape.accumulate`), with the
/// variant [`pick`] chooses.
///
/// C must not share memory with A, B or the bias: workgroups read A and B while others write C.
pub fn matmul(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    shape: &MatmulShape,
    bias: Option<&GpuTensor>,
) -> Result<()> {
    let variant = pick(rec.gpu(), shape)?;
    matmul_with(rec, a, b, c, shape, bias, variant)
}

/// [`matmul`] in `precision`: with [`Precision::F16`], products that would take 128-wide tiles take a
/// half-precision variant instead ([`pick_half`]; the adapter must have SHADER_F16).
pub fn matmul_in(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    shape: &MatmulShape,
    bias: Option<&GpuTensor>,
    precision: Precision,
) -> Result<()> {
    let variant = pick_in(rec.gpu(), shape, precision)?;
    matmul_with(rec, a, b, c, shape, bias, variant)
}

/// The variant [`matmul_in`] uses for `shape` in `precision`.
pub fn pick_in(gpu: &Gpu, shape: &MatmulShape, precision: Precision) -> Result<Variant> {
    Ok(match (precision, pick(gpu, shape)?) {
        (Precision::F16, Variant::Tile128 | Variant::Tile128K16 | Variant::Tile128Prefetch) => {
            pick_half(gpu, shape)?
        }
        (_, variant) => variant,
    })
}

/// [`matmul`] with a given variant (for tests and benchmarks).
pub fn matmul_with(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    shape: &MatmulShape,
    bias: Option<&GpuTensor>,
    variant: Variant,
) -> Result<()> {
    VARIANTS.check_supported(rec.gpu(), variant).context("matmul: use f32 products")?;
    matmul_on(rec, a, b, c, shape, bias, variant, variant.shader(shape.trans_a, shape.trans_b))
}

/// [`matmul_with`] on `shader`, a build of `variant`'s kernel for the shape's layout that the caller
/// supplies and that is not checked against the device: how a test runs a kernel's own logic with some
/// of its operations replaced (the cooperative ones emulated in plain WGSL, on an adapter without them).
#[allow(clippy::too_many_arguments)]
pub fn matmul_on(
    rec: &mut Recorder,
    a: &GpuTensor,
    b: &GpuTensor,
    c: &GpuTensor,
    shape: &MatmulShape,
    bias: Option<&GpuTensor>,
    variant: Variant,
    shader: &'static Shader,
) -> Result<()> {
    let MatmulShape { m, n, k, trans_a, trans_b, accumulate } = *shape;
    let (a_rows, a_cols) = if trans_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b { (n, k) } else { (k, n) };
    let a_len = elements("matmul A", a_rows, a_cols)?;
    let b_len = elements("matmul B", b_rows, b_cols)?;
    let c_len = elements("matmul C", m, n)?;
    check_operand("A", a, a_len, [a_rows, a_cols], shape)?;
    check_operand("B", b, b_len, [b_rows, b_cols], shape)?;
    check_operand("C", c, c_len, [m, n], shape)?;
    if let Some(bias) = bias {
        ensure!(bias.len == n as usize, "matmul: bias ({}) has {} elements, n is {n}", bias.label, bias.len);
    }
    let [tile_rows, tile_cols] = VARIANTS.entry(variant).tile;
    let grid = [n.div_ceil(tile_cols), m.div_ceil(tile_rows), 1];
    ensure!(
        grid[0] <= MAX_WORKGROUPS && grid[1] <= MAX_WORKGROUPS,
        "matmul {shape:?} needs {grid:?} workgroups of {tile_rows}x{tile_cols}; at most {MAX_WORKGROUPS} per \
         dimension (m up to {}, n up to {})",
        MAX_WORKGROUPS * tile_rows,
        MAX_WORKGROUPS * tile_cols
    );
    let splits = if variant == Variant::Tile64 { k_splits(m, n, k) } else { 1 };
    let k_split = k.div_ceil(splits).next_multiple_of(TILE64_K).max(TILE64_K);
    let splits = k.div_ceil(k_split).max(1);
    let params = Params {
        m,
        n,
        k,
        has_bias: bias.is_some().into(),
        accumulate: accumulate.into(),
        row_blocks: 0,
        k_split,
        splits,
    };
    let (mf, nf, kf) = (f64::from(m), f64::from(n), f64::from(k));
    let bytes = 4.0 * (mf * kf + kf * nf + mf * nf * if accumulate { 2.0 } else { 1.0 });
    rec.set_cost(2.0 * mf * nf * kf, bytes);
    // Without a bias the shader never reads binding 4, but the binding must hold some buffer.
    if splits == 1 {
        return rec.dispatch(shader, "gemm", &params, &[a, b, c, bias.unwrap_or(a)], grid);
    }
    // Split-K: partial products into scratch, then their sum (with bias and accumulation) into C.
    let partials = rec.scratch(c_len * splits as usize)?;
    let slices = Params { has_bias: 0, accumulate: 0, ..params };
    rec.dispatch(shader, "gemm", &slices, &[a, b, &partials, a], [grid[0], grid[1], splits])?;
    rec.set_cost(0.0, 4.0 * mf * nf * f64::from(splits + 1 + u32::from(accumulate)));
    let sum_grid = grid_1d((c_len as u32).div_ceil(SUM_COLUMNS));
    rec.dispatch(shader, "split_k_sum", &params, &[&partials, b, c, bias.unwrap_or(a)], sum_grid)
}

/// Row blocks of the first column-sum stage.
fn row_blocks(rows: u32) -> u32 {
    rows.div_ceil(SUM_ROWS)
}

/// Elements of the scratch tensor that [`column_sums`] needs: one partial sum per column and row block.
pub fn column_sums_scratch_len(rows: u32, cols: u32) -> usize {
    row_blocks(rows) as usize * cols as usize
}

/// Records `out[cols]` = sum over rows of `x[rows, cols]` (+ out when `accumulate`), summed in a fixed order
/// (deterministic, no atomics). `scratch` holds [`column_sums_scratch_len`] elements (or more) and must
/// not overlap `x` or `out`.
pub fn column_sums(
    rec: &mut Recorder,
    x: &GpuTensor,
    out: &GpuTensor,
    rows: u32,
    cols: u32,
    accumulate: bool,
    scratch: &GpuTensor,
) -> Result<()> {
    let x_len = elements("column_sums x", rows, cols)?;
    ensure!(x.len == x_len, "column_sums: x ({}) has {} elements, needs {rows} x {cols}", x.label, x.len);
    ensure!(
        out.len == cols as usize,
        "column_sums: out ({}) has {} elements, needs {cols}",
        out.label,
        out.len
    );
    let scratch_len = column_sums_scratch_len(rows, cols);
    ensure!(
        scratch.len >= scratch_len,
        "column_sums: scratch ({}) has {} elements, {rows} x {cols} needs {scratch_len}",
        scratch.label,
        scratch.len
    );
    let blocks = row_blocks(rows);
    let column_groups = cols.div_ceil(SUM_COLUMNS);
    ensure!(
        column_groups <= MAX_WORKGROUPS && blocks <= MAX_WORKGROUPS,
        "column_sums of {rows} x {cols} needs {column_groups} x {blocks} workgroups; at most {MAX_WORKGROUPS} \
         per dimension"
    );
    let params = Params {
        m: rows,
        n: cols,
        k: 0,
        has_bias: 0,
        accumulate: accumulate.into(),
        row_blocks: blocks,
        k_split: 0,
        splits: 0,
    };
    let tensors = [x, scratch, out];
    rec.dispatch(column_sums_shader(), "column_sums_partial", &params, &tensors, [column_groups, blocks, 1])?;
    rec.dispatch(column_sums_shader(), "column_sums_total", &params, &tensors, grid_1d(column_groups))
}

/// The plain-Rust reference (f64).
pub mod reference {
    use super::MatmulShape;

    /// op(A) op(B) as a row-major [m, n] matrix (`accumulate` is the caller's business).
    pub fn matmul(a: &[f64], b: &[f64], shape: &MatmulShape) -> Vec<f64> {
        let (m, n, k) = (shape.m as usize, shape.n as usize, shape.k as usize);
        assert_eq!(a.len(), m * k, "reference matmul: A length");
        assert_eq!(b.len(), k * n, "reference matmul: B length");
        let a_at = |i: usize, l: usize| if shape.trans_a { a[l * m + i] } else { a[i * k + l] };
        let b_at = |l: usize, j: usize| if shape.trans_b { b[j * k + l] } else { b[l * n + j] };
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a_at(i, l) * b_at(l, j)).sum();
            }
        }
        c
    }

    /// Sums over rows of a row-major [rows, cols] matrix.
    pub fn column_sums(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        assert_eq!(x.len(), rows * cols, "reference column_sums: x length");
        let mut out = vec![0.0; cols];
        for row in x.chunks_exact(cols.max(1)).take(rows) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::reference::*;
    use super::MatmulShape;
    use crate::ops::testing::*;

    /// dA and dB of L = sum(R * op(A) op(B)), each written as a matmul of the stored tensors the way the
    /// model's backward pass computes them.
    fn gradients(a: &[f64], b: &[f64], r: &[f64], s: &MatmulShape) -> (Vec<f64>, Vec<f64>) {
        let (m, n, k) = (s.m, s.n, s.k);
        let shape = |m, n, k, trans_a, trans_b| MatmulShape { m, n, k, trans_a, trans_b, accumulate: false };
        // d op(A) = R op(B)^T [m,k]; stored transposed, dA = op(B) R^T [k,m].
        let da = if s.trans_a {
            matmul(b, r, &shape(k, m, n, s.trans_b, true))
        } else {
            matmul(r, b, &shape(m, k, n, false, !s.trans_b))
        };
        // d op(B) = op(A)^T R [k,n]; stored transposed, dB = R^T op(A) [n,k].
        let db = if s.trans_b {
            matmul(r, a, &shape(n, k, m, true, s.trans_a))
        } else {
            matmul(a, r, &shape(k, n, m, !s.trans_a, false))
        };
        (da, db)
    }

    #[test]
    fn matmul_gradients_match_finite_differences() {
        let (m, n, k) = (5, 3, 7);
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let s = MatmulShape { m, n, k, trans_a, trans_b, accumulate: false };
            let (a, b) = (randn((m * k) as usize, 1), randn((k * n) as usize, 2));
            let r = randn((m * n) as usize, 3);
            let (da, db) = gradients(&a, &b, &r, &s);
            let fd_a = finite_difference(&|x| weighted_sum(&r, &matmul(x, &b, &s)), &a, 1e-6);
            let fd_b = finite_difference(&|x| weighted_sum(&r, &matmul(&a, x, &s)), &b, 1e-6);
            assert_close(&format!("matmul dA ta={trans_a} tb={trans_b}"), &da, &fd_a, 1e-6);
            assert_close(&format!("matmul dB ta={trans_a} tb={trans_b}"), &db, &fd_b, 1e-6);
        }
    }

    #[test]
    fn transposed_storage_gives_the_same_product() {
        let (m, n, k) = (4usize, 6usize, 5usize);
        let (a, b) = (randn(m * k, 4), randn(k * n, 5));
        let transpose = |x: &[f64], rows: usize, cols: usize| -> Vec<f64> {
            (0..cols * rows).map(|i| x[(i % rows) * cols + i / rows]).collect()
        };
        let plain = MatmulShape { m: 4, n: 6, k: 5, trans_a: false, trans_b: false, accumulate: false };
        let both = MatmulShape { trans_a: true, trans_b: true, ..plain };
        let want = matmul(&a, &b, &plain);
        assert_close(
            "matmul tt vs nn",
            &matmul(&transpose(&a, m, k), &transpose(&b, k, n), &both),
            &want,
            1e-12,
        );
    }

    /// The cooperative-matrix kernel, in each of its four layouts, multiplies in exactly the shape its
    /// variant is checked for (16x16x16, f16 operands, f32 sums) and fits WebGPU's 16 KiB of workgroup
    /// memory; it is among the shaders every device-free validation covers.
    #[test]
    fn the_cooperative_kernel_needs_one_shape_and_16_kib() {
        use crate::gpu::{CooperativeShape, KernelNeeds};
        let entry = super::VARIANTS.entry(super::Variant::Coop16);
        assert_eq!(entry.shaders.len(), 4);
        for s in entry.shaders {
            let shapes = CooperativeShape::of(s.name, &s.full_source()).unwrap();
            let names: Vec<String> = shapes.iter().map(ToString::to_string).collect();
            assert_eq!(names, ["16x16x16 f16->f32"], "{}", s.name);
            let needs = KernelNeeds::of(s.name, &s.full_source()).unwrap();
            assert!(needs.workgroup_bytes <= 16 * 1024, "{}: {needs:?}", s.name);
            assert!(crate::ops::shaders().any(|t| std::ptr::eq(t, s)), "{} is validated", s.name);
        }
        // The f32 kernels use none.
        let tile64 = &super::VARIANTS.entry(super::Variant::Tile64).shaders[0];
        assert!(CooperativeShape::of(tile64.name, &tile64.full_source()).unwrap().is_empty());
    }

    /// Without a device that has cooperative matrices, the kernel is at least translated as wgpu's
    /// Vulkan backend translates it, in all four layouts, and validated where SPIRV-Tools is installed.
    #[test]
    fn the_cooperative_kernel_translates_to_valid_spir_v() {
        for s in super::VARIANTS.entry(super::Variant::Coop16).shaders {
            crate::ops::spirv_check::translates(s, &["gemm"]);
        }
    }

    #[test]
    fn bias_gradient_is_the_column_sums_of_the_incoming_gradient() {
        // y = x + bias broadcast over rows, mid-graph: dL/dbias = column sums of R.
        let (rows, cols) = (6, 4);
        let (x, r, bias) = (randn(rows * cols, 6), randn(rows * cols, 7), randn(cols, 8));
        let forward =
            |bias: &[f64]| -> Vec<f64> { x.iter().enumerate().map(|(i, v)| v + bias[i % cols]).collect() };
        let fd = finite_difference(&|b| weighted_sum(&r, &forward(b)), &bias, 1e-6);
        assert_close("bias gradient vs finite differences", &column_sums(&r, rows, cols), &fd, 1e-6);
    }
}
