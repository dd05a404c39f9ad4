//! Matmul and column sums on the GPU against the f64 reference, on shapes that fill no 64x64 tile, 16-deep
//! k-slice or 256-wide workgroup evenly, with every transpose combination, bias and accumulation.
//!
//! Tolerance: the GPU accumulates k products in f32 (rounding ~6e-8 per step, growing like sqrt(k) for
//! random signs), so for k <= 200 the absolute error is a few 1e-5 at most against values of RMS ~sqrt(k).
//! error_stats floors the denominator at 1e-3 of the RMS, so entries that nearly cancel show the largest
//! relative errors (up to ~4e-4 seen here). 1e-3 leaves room for that while any wrong index, missing
//! k-slice or stale tile gives errors of order 1.

mod common;

use ncalm::gpu::tune;
use ncalm::gpu::{GpuTensor, KernelCache, Recorder};
use ncalm::ops::matmul::{self, reference, MatmulShape, Variant};
use ncalm::ops::testing::*;
use ncalm::Gpu;

const TOLERANCE: f64 = 1e-3;

fn upload(gpu: &Gpu, values: &[f64], label: &str) -> GpuTensor {
    gpu.upload(&to_f32(values), label).unwrap()
}

/// `want + add` element-wise (what accumulation or a bias should give).
fn plus(want: &[f64], add: &[f64]) -> Vec<f64> {
    want.iter().zip(add).map(|(w, a)| w + a).collect()
}

/// The bias broadcast over `rows` rows.
fn broadcast(bias: &[f64], rows: usize) -> Vec<f64> {
    bias.iter().copied().cycle().take(rows * bias.len()).collect()
}

/// op(A) op(B) (+ `bias` on every row) (+ `c0` when the shape accumulates): what a product writes.
fn expected(a: &[f64], b: &[f64], shape: &MatmulShape, bias: Option<&[f64]>, c0: &[f64]) -> Vec<f64> {
    let mut want = reference::matmul(a, b, shape);
    if let Some(bias) = bias {
        want = plus(&want, &broadcast(bias, shape.m as usize));
    }
    if shape.accumulate {
        want = plus(&want, c0);
    }
    want
}

#[test]
fn matmul_matches_the_reference_for_every_transpose_bias_and_accumulation() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    // (37, 29, 53): one partial tile and a k that is no multiple of 16; (131, 70, 200): several 64-wide
    // workgroups in every dimension of the grid; (1, 67, 5): a single row and a k below one slice;
    // (270, 300, 19): several 128-wide workgroups, each dimension ending in a partial one; (40, 70, 1000):
    // a small output and a long k, which the 64-wide variant splits into slices of k (the last partial).
    for (m, n, k) in [(37u32, 29u32, 53u32), (131, 70, 200), (1, 67, 5), (270, 300, 19), (40, 70, 1000)] {
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        let (a, b) = (randn(mu * ku, 11), randn(ku * nu, 12));
        let (bias, c0) = (randn(nu, 13), randn(mu * nu, 14));
        let (ga, gb, gbias) = (upload(&gpu, &a, "a"), upload(&gpu, &b, "b"), upload(&gpu, &bias, "bias"));
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let cases = [(false, false), (true, false), (false, true), (true, true)];
            for ((with_bias, accumulate), variant) in
                cases.into_iter().flat_map(|c| Variant::tunable().into_iter().map(move |v| (c, v)))
            {
                let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate };
                let c = upload(&gpu, &c0, "c");
                let mut rec = Recorder::new(&gpu, &cache);
                let gpu_bias = with_bias.then_some(&gbias);
                matmul::matmul_with(&mut rec, &ga, &gb, &c, &shape, gpu_bias, variant).unwrap();
                rec.submit();
                let want = expected(&a, &b, &shape, with_bias.then_some(&bias[..]), &c0);
                let name = format!(
                    "{} {m}x{n}x{k} ta={trans_a:<5} tb={trans_b:<5} bias={with_bias:<5} acc={accumulate:<5}",
                    variant.name()
                );
                assert_close_f32(&name, &gpu.read::<f32>(&c).unwrap(), &want, TOLERANCE);
            }
        }
    }
}

/// The half-precision kernel against the f64 product of the operands rounded to f16, so the error left
/// is its f16 sums of 16 products: 16 roundings of up to half an f16 ulp (2^-11 relative) of partial sums
/// of order 4 * sqrt(16), seen here up to 0.6% of the outputs' RMS, with mean relative errors of 2e-3 to
/// 3e-3; the bounds are 1% and 1e-2. A wrong index or a lost slice is off by the RMS itself. The same
/// shapes as the f32 kernels, every transpose, bias and accumulation.
#[test]
fn half_precision_matmul_matches_the_f16_rounded_product() {
    let gpu = common::gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SHADER_F16) {
        println!("this adapter has no f16 arithmetic: the half-precision kernel is not tested");
        return;
    }
    let cache = KernelCache::default();
    let to_f16 = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect() };
    for (m, n, k) in [(37u32, 29u32, 53u32), (131, 70, 200), (270, 300, 19), (40, 70, 1000)] {
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        let (a, b) = (rounded(&randn(mu * ku, 21)), rounded(&randn(ku * nu, 22)));
        let (bias, c0) = (rounded(&randn(nu, 23)), rounded(&randn(mu * nu, 24)));
        let (ga, gb, gbias) = (upload(&gpu, &a, "a"), upload(&gpu, &b, "b"), upload(&gpu, &bias, "bias"));
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            for (with_bias, accumulate) in [(false, false), (true, true)] {
                let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate };
                let c = upload(&gpu, &c0, "c");
                let mut rec = Recorder::new(&gpu, &cache);
                let gpu_bias = with_bias.then_some(&gbias);
                matmul::matmul_with(&mut rec, &ga, &gb, &c, &shape, gpu_bias, Variant::Tile128Half).unwrap();
                rec.submit();
                let want = expected(&to_f16(&a), &to_f16(&b), &shape, with_bias.then_some(&bias[..]), &c0);
                let name = format!("f16 {m}x{n}x{k} ta={trans_a:<5} tb={trans_b:<5} bias+acc={with_bias:<5}");
                let got = to_f64(&gpu.read::<f32>(&c).unwrap());
                let e = error_stats(&got, &want);
                let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len() as f64).sqrt();
                println!(
                    "{name}: max abs error {:.1e} (RMS {rms:.1}), mean relative {:.1e}",
                    e.max_abs, e.mean
                );
                assert!(e.max_abs < 1e-2 * rms && e.mean < 1e-2, "{name}: errors beyond f16 sums");
            }
        }
    }
}

/// The cooperative-matrix kernel (`coop16`, tensor cores) against the f64 product of the operands
/// rounded to f16: its sums are f32, so the f32 kernels' tolerance holds. Shapes that fill no 64 x 64
/// tile or 32-deep slice evenly, a single row, a k below one 16-deep step, and a long k; every layout,
/// bias and accumulation. Runs on any adapter that lists the 16x16x16 f16->f32 shape; elsewhere it says
/// why it is skipped.
#[test]
fn cooperative_matmul_matches_the_f16_rounded_product() {
    let gpu = common::gpu();
    if let Some(why) = matmul::cooperative_shortfall(&gpu) {
        common::skipped("matmul coop16", &why);
        return;
    }
    let cache = KernelCache::default();
    let to_f16 = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect() };
    for (m, n, k) in [(37u32, 29u32, 53u32), (131, 70, 200), (1, 67, 5), (270, 300, 19), (40, 70, 1000)] {
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        let (a, b) = (to_f16(&randn(mu * ku, 31)), to_f16(&randn(ku * nu, 32)));
        let (bias, c0) = (rounded(&randn(nu, 33)), rounded(&randn(mu * nu, 34)));
        let (ga, gb, gbias) = (upload(&gpu, &a, "a"), upload(&gpu, &b, "b"), upload(&gpu, &bias, "bias"));
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            for (with_bias, accumulate) in [(false, false), (true, false), (false, true), (true, true)] {
                let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate };
                let c = upload(&gpu, &c0, "c");
                let mut rec = Recorder::new(&gpu, &cache);
                let gpu_bias = with_bias.then_some(&gbias);
                matmul::matmul_with(&mut rec, &ga, &gb, &c, &shape, gpu_bias, Variant::Coop16).unwrap();
                rec.submit();
                let want = expected(&a, &b, &shape, with_bias.then_some(&bias[..]), &c0);
                let name = format!(
                    "coop16 {m}x{n}x{k} ta={trans_a:<5} tb={trans_b:<5} bias={with_bias:<5} acc={accumulate:<5}"
                );
                assert_close_f32(&name, &gpu.read::<f32>(&c).unwrap(), &want, TOLERANCE);
            }
        }
    }
}

/// Plain-WGSL stand-ins for the cooperative-matrix operations, at their documented semantics: a
/// fragment is 16 x 16; `coopLoad` reads it column-major (element (i, j) at `j * stride + i`),
/// `coopLoadT` row-major (at `i * stride + j`); `coopMultiplyAdd(a, b, c)` is a b + c; `coopStoreT`
/// writes row-major. An operand fragment is kept as where it lies in the staged tile (the products read
/// it there, before the next barrier); an accumulator as the elements lane, lane + w, ... of the 256 that
/// each invocation of a subgroup of w (at least 8) owns.
const EMULATION: &str = "
var<private> emu_lane: u32;
var<private> emu_width: u32;
fn emu_load_a(row_major: bool, at: u32, stride: u32) -> vec3<u32> {
    return vec3<u32>(at, stride, u32(row_major));
}
fn emu_load_b(row_major: bool, at: u32, stride: u32) -> vec3<u32> {
    return vec3<u32>(at, stride, u32(row_major));
}
// Element (i, j) of a fragment at f.x with stride f.y, row-major where f.z is 1.
fn emu_at(f: vec3<u32>, i: u32, j: u32) -> u32 {
    return f.x + select(j * f.y + i, i * f.y + j, f.z == 1u);
}
fn emu_mma(x: vec3<u32>, y: vec3<u32>, z: array<f32, 32>) -> array<f32, 32> {
    var r = z;
    for (var e = emu_lane; e < 256u; e += emu_width) {
        let i = e / 16u;
        let j = e % 16u;
        var sum = r[e / emu_width];
        for (var l = 0u; l < 16u; l++) {
            sum = fma(f32(a_tile[emu_at(x, i, l)]), f32(b_tile[emu_at(y, l, j)]), sum);
        }
        r[e / emu_width] = sum;
    }
    return r;
}
fn emu_store(m: array<f32, 32>, at: u32, stride: u32) {
    var ms = m;
    for (var e = emu_lane; e < 256u; e += emu_width) {
        c_out[at + (e / 16u) * stride + e % 16u] = ms[e / emu_width];
    }
}
";

/// The cooperative-matrix kernel's source with its cooperative operations replaced by [`EMULATION`]'s.
fn emulated(source: &str) -> String {
    let replacements = [
        ("enable f16, wgpu_cooperative_matrix;", "enable f16;"),
        ("alias FragA = coop_mat16x16<f16, A>;", "alias FragA = vec3<u32>;"),
        ("alias FragB = coop_mat16x16<f16, B>;", "alias FragB = vec3<u32>;"),
        ("alias Sums = coop_mat16x16<f32, C>;", "alias Sums = array<f32, 32>;"),
        ("coopLoad<FragA>(&a_tile[kk * TILE + r], TILE)", "emu_load_a(false, kk * TILE + r, TILE)"),
        ("coopLoadT<FragA>(&a_tile[r * TILE_K + kk], TILE_K)", "emu_load_a(true, r * TILE_K + kk, TILE_K)"),
        ("coopLoad<FragB>(&b_tile[c * TILE_K + kk], TILE_K)", "emu_load_b(false, c * TILE_K + kk, TILE_K)"),
        ("coopLoadT<FragB>(&b_tile[kk * TILE + c], TILE)", "emu_load_b(true, kk * TILE + c, TILE)"),
        ("coopStoreT(sums, &c_out[quarter * 256u], 16u)", "emu_store(sums, quarter * 256u, 16u)"),
        ("coopMultiplyAdd(", "emu_mma("),
        (
            "@builtin(num_subgroups) subgroups: u32,\n) {\n",
            "@builtin(num_subgroups) subgroups: u32,\n    @builtin(subgroup_invocation_id) emu_l: u32,\n    \
             @builtin(subgroup_size) emu_w: u32,\n) {\n    emu_lane = emu_l;\n    emu_width = emu_w;\n",
        ),
    ];
    // Comments out, so that no cooperative operation is left unemulated unseen.
    let lines = source.lines().map(|l| l.split("//").next().unwrap_or("").trim_end().to_string() + "\n");
    let mut out: String = lines.collect();
    for (from, to) in replacements {
        assert!(out.contains(from), "the emulation no longer matches shaders/matmul_coop.wgsl: no {from:?}");
        out = out.replace(from, to);
    }
    assert!(!out.contains("coop"), "a cooperative operation is left unemulated");
    out + EMULATION
}

/// The cooperative-matrix kernel's own staging, fragment addressing, passes over quarters, write-out,
/// bias, accumulation and edges, on any adapter with f16 and subgroups of 8 or more: its source with
/// the cooperative operations emulated in plain WGSL, against the f64 product of the f16-rounded
/// operands. On lavapipe (subgroups of 8) the workgroup has 16 subgroups, 12 of them without a quarter.
/// What this cannot show is a GPU's cooperative operations themselves: the test above and tuning's
/// check do, where a GPU has them.
#[test]
fn cooperative_kernel_logic_matches_with_emulated_matrices() {
    use ncalm::wgpu::Features;
    let gpu = common::gpu();
    if !gpu.features().contains(Features::SHADER_F16 | Features::SUBGROUP) {
        common::skipped("matmul coop16 emulated", "the adapter lacks SHADER_F16 or SUBGROUP");
        return;
    }
    if gpu.adapter_info.subgroup_min_size < 8 {
        common::skipped("matmul coop16 emulated", "the emulation needs subgroups of 8 or more");
        return;
    }
    let cache = KernelCache::default();
    let shaders = matmul::VARIANTS.entry(Variant::Coop16).shaders;
    let to_f16 = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect() };
    for (m, n, k) in [(37u32, 29u32, 53u32), (70, 130, 45), (1, 67, 5)] {
        let (mu, nu, ku) = (m as usize, n as usize, k as usize);
        let (a, b) = (to_f16(&randn(mu * ku, 41)), to_f16(&randn(ku * nu, 42)));
        let (bias, c0) = (rounded(&randn(nu, 43)), rounded(&randn(mu * nu, 44)));
        let (ga, gb, gbias) = (upload(&gpu, &a, "a"), upload(&gpu, &b, "b"), upload(&gpu, &bias, "bias"));
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            let original = &shaders[2 * usize::from(trans_a) + usize::from(trans_b)];
            let shader: &'static ncalm::gpu::Shader = Box::leak(Box::new(ncalm::gpu::Shader {
                name: Box::leak(format!("{}_emulated", original.name).into_boxed_str()),
                source: Box::leak(emulated(&original.full_source()).into_boxed_str()),
                with_rng: false,
                consts: &[],
            }));
            for (with_bias, accumulate) in [(false, false), (true, true)] {
                let shape = MatmulShape { m, n, k, trans_a, trans_b, accumulate };
                let c = upload(&gpu, &c0, "c");
                let mut rec = Recorder::new(&gpu, &cache);
                let gbias = with_bias.then_some(&gbias);
                matmul::matmul_on(&mut rec, &ga, &gb, &c, &shape, gbias, Variant::Coop16, shader).unwrap();
                rec.submit();
                let want = expected(&a, &b, &shape, with_bias.then_some(&bias[..]), &c0);
                let name = format!(
                    "coop16 emulated {m}x{n}x{k} ta={trans_a:<5} tb={trans_b:<5} bias+acc={with_bias}"
                );
                assert_close_f32(&name, &gpu.read::<f32>(&c).unwrap(), &want, TOLERANCE);
            }
        }
    }
}

/// Tuning checks a half-precision variant against the f32 reference variant at a tolerance that f16
/// operands leave room for: the half-precision kernels this adapter runs agree in every layout, and a
/// deliberately wrong one (a product that drops the last step of k) is caught at that tolerance.
#[test]
fn half_precision_variants_agree_at_f16_tolerance_and_a_wrong_one_is_caught() {
    let gpu = common::gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SHADER_F16) {
        common::skipped("half-precision matmul checks", "the adapter has no SHADER_F16");
        return;
    }
    assert_eq!(matmul::agreement(Variant::Tile128Half), matmul::AGREEMENT_F16);
    assert_eq!(matmul::agreement(Variant::Coop16), matmul::AGREEMENT_F16);
    assert_eq!(matmul::agreement(Variant::Tile64), matmul::AGREEMENT);
    let mut half = vec![Variant::Tile128Half];
    match matmul::cooperative_shortfall(&gpu) {
        None => half.push(Variant::Coop16),
        Some(why) => common::skipped("coop16 against the f32 reference", &why),
    }
    for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
        let shape = MatmulShape { m: 70, n: 130, k: 45, trans_a, trans_b, accumulate: false };
        for &variant in &half {
            let candidate = |rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor| {
                matmul::matmul_with(rec, a, b, c, &shape, None, variant)
            };
            let found =
                matmul::disagreement_within(&gpu, &shape, Variant::Tile64, &candidate, matmul::AGREEMENT_F16)
                    .unwrap();
            assert_eq!(found, None, "{} ({trans_a}, {trans_b})", variant.name());
        }
        let short = MatmulShape { k: shape.k - 1, ..shape };
        for &variant in &half {
            let wrong = |rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor| {
                let (a, b) =
                    (a.slice(0, (short.m * short.k) as usize), b.slice(0, (short.k * short.n) as usize));
                matmul::matmul_with(rec, &a, &b, c, &short, None, variant)
            };
            let found =
                matmul::disagreement_within(&gpu, &shape, Variant::Tile64, &wrong, matmul::AGREEMENT_F16)
                    .unwrap();
            let caught = found.as_deref().is_some_and(|why| why.contains("where the reference has"));
            assert!(caught, "{} without its last step of k: {found:?}", variant.name());
        }
    }
}

/// An f16 product's variant is tuned among the half-precision variants the adapter runs, each checked
/// first: here the kernel that every f16 adapter runs passes its check, is timed, and the choice is
/// remembered; `coop16` is a candidate only where the adapter lists its shape.
#[test]
fn half_precision_tuning_checks_and_times_the_variants_the_adapter_runs() {
    let gpu = common::gpu();
    if !gpu.features().contains(ncalm::wgpu::Features::SHADER_F16) {
        common::skipped("half-precision tuning", "the adapter has no SHADER_F16");
        return;
    }
    let mut tuner = tune::Tuner::open(None);
    let shape = MatmulShape { m: 130, n: 70, k: 45, trans_a: false, trans_b: true, accumulate: false };
    let (variant, timed) = matmul::choose_half(&mut tuner, &gpu, &shape).unwrap();
    assert!(timed, "the first f16 product of a class is checked and timed");
    match matmul::cooperative_shortfall(&gpu) {
        None => assert!(matches!(variant, Variant::Tile128Half | Variant::Coop16), "{variant:?}"),
        Some(_) => assert_eq!(variant, Variant::Tile128Half),
    }
    assert_eq!(matmul::choose_half(&mut tuner, &gpu, &shape).unwrap(), (variant, false));
}

fn rounded(v: &[f64]) -> Vec<f64> {
    to_f64(&to_f32(v))
}

/// One linear layer as the model runs it: Y = X W^T + b, dX = dY W, and dW, db accumulated onto what the
/// gradient buffers already hold (gradient accumulation over micro-batches).
#[test]
fn linear_layer_forward_and_backward_match_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (tokens, d_in, d_out) = (131u32, 70u32, 45u32);
    let (nt, ni, no) = (tokens as usize, d_in as usize, d_out as usize);
    let (x, w, bias, dy) = (randn(nt * ni, 21), randn(no * ni, 22), randn(no, 23), randn(nt * no, 24));
    let (dw0, db0) = (randn(no * ni, 25), randn(no, 26));
    let (gx, gw, gbias, gdy) =
        (upload(&gpu, &x, "x"), upload(&gpu, &w, "w"), upload(&gpu, &bias, "b"), upload(&gpu, &dy, "dy"));
    let (gdw, gdb) = (upload(&gpu, &dw0, "dw"), upload(&gpu, &db0, "db"));
    let gy = gpu.tensor(nt * no, "y").unwrap();
    let gdx = gpu.tensor(nt * ni, "dx").unwrap();
    let scratch = gpu.tensor(matmul::column_sums_scratch_len(tokens, d_out), "scratch").unwrap();

    let forward =
        MatmulShape { m: tokens, n: d_out, k: d_in, trans_a: false, trans_b: true, accumulate: false };
    let input_grad =
        MatmulShape { m: tokens, n: d_in, k: d_out, trans_a: false, trans_b: false, accumulate: false };
    let weight_grad =
        MatmulShape { m: d_out, n: d_in, k: tokens, trans_a: true, trans_b: false, accumulate: true };
    let mut rec = Recorder::new(&gpu, &cache);
    matmul::matmul(&mut rec, &gx, &gw, &gy, &forward, Some(&gbias)).unwrap();
    matmul::matmul(&mut rec, &gdy, &gw, &gdx, &input_grad, None).unwrap();
    matmul::matmul(&mut rec, &gdy, &gx, &gdw, &weight_grad, None).unwrap();
    matmul::column_sums(&mut rec, &gdy, &gdb, tokens, d_out, true, &scratch).unwrap();
    rec.submit();

    let want_y = plus(&reference::matmul(&x, &w, &forward), &broadcast(&bias, nt));
    let want_dx = reference::matmul(&dy, &w, &input_grad);
    let want_dw = plus(&dw0, &reference::matmul(&dy, &x, &weight_grad));
    let want_db = plus(&db0, &reference::column_sums(&dy, nt, no));
    assert_close_f32("linear y = x w^T + b", &gpu.read::<f32>(&gy).unwrap(), &want_y, TOLERANCE);
    assert_close_f32("linear dx = dy w", &gpu.read::<f32>(&gdx).unwrap(), &want_dx, TOLERANCE);
    assert_close_f32("linear dw += dy^T x", &gpu.read::<f32>(&gdw).unwrap(), &want_dw, TOLERANCE);
    assert_close_f32("linear db += colsum dy", &gpu.read::<f32>(&gdb).unwrap(), &want_db, TOLERANCE);
}

#[test]
fn column_sums_match_the_reference_and_repeat_bit_for_bit() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    // 1000 x 37: four row blocks, one partial column group; 300 x 300: two of each.
    for (rows, cols) in [(1000u32, 37u32), (300, 300), (5, 3)] {
        let (ru, cu) = (rows as usize, cols as usize);
        let (x, out0) = (randn(ru * cu, 31), randn(cu, 32));
        let gx = upload(&gpu, &x, "x");
        let scratch = gpu.tensor(matmul::column_sums_scratch_len(rows, cols), "scratch").unwrap();
        let want = reference::column_sums(&x, ru, cu);
        let mut first_run: Option<Vec<f32>> = None;
        for accumulate in [false, true, false] {
            let out = upload(&gpu, &out0, "out");
            let mut rec = Recorder::new(&gpu, &cache);
            matmul::column_sums(&mut rec, &gx, &out, rows, cols, accumulate, &scratch).unwrap();
            rec.submit();
            let got = gpu.read::<f32>(&out).unwrap();
            let expected = if accumulate { plus(&want, &out0) } else { want.clone() };
            assert_close_f32(
                &format!("column sums {rows}x{cols} acc={accumulate}"),
                &got,
                &expected,
                TOLERANCE,
            );
            if !accumulate {
                match &first_run {
                    None => first_run = Some(got),
                    Some(first) => assert_eq!(first, &got, "column sums {rows}x{cols} differ between runs"),
                }
            }
        }
    }
}

#[test]
fn launchers_reject_tensors_of_the_wrong_size() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let t = |len: usize| gpu.tensor(len, "t").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    let shape = MatmulShape { m: 4, n: 3, k: 2, trans_a: false, trans_b: true, accumulate: false };
    let err = matmul::matmul(&mut rec, &t(8), &t(5), &t(12), &shape, None).unwrap_err();
    assert!(err.to_string().contains("B"), "{err}");
    let err = matmul::matmul(&mut rec, &t(8), &t(6), &t(12), &shape, Some(&t(4))).unwrap_err();
    assert!(err.to_string().contains("bias"), "{err}");
    let err = matmul::column_sums(&mut rec, &t(12), &t(3), 4, 3, false, &t(0)).unwrap_err();
    assert!(err.to_string().contains("scratch"), "{err}");
    let wide =
        MatmulShape { m: 1, n: 65_535 * 64 + 1, k: 0, trans_a: false, trans_b: false, accumulate: false };
    let err = matmul::matmul_with(&mut rec, &t(0), &t(0), &t(65_535 * 64 + 1), &wide, None, Variant::Tile64)
        .unwrap_err();
    assert!(err.to_string().contains("workgroups"), "{err}");
}

#[test]
fn tuning_times_each_shape_class_once_and_remembers_it() {
    let gpu = common::gpu();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache").join(tune::FILE);
    let shape = MatmulShape { m: 100, n: 70, k: 300, trans_a: true, trans_b: false, accumulate: false };
    let mut tuner = tune::Tuner::open(Some(path.clone()));
    let (variant, timed) = matmul::choose(&mut tuner, &gpu, &shape).unwrap();
    assert!(timed, "the first product of a class is timed");
    // Another shape of the same class reuses the choice.
    assert_eq!(matmul::choose(&mut tuner, &gpu, &MatmulShape { m: 120, ..shape }).unwrap(), (variant, false));
    // The choice is recorded per version of each variant: its name and a hash of its shader source.
    let adapter = tune::adapter_key(&gpu);
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let choices = file[&adapter].as_object().unwrap();
    let (key, chosen) = choices.iter().next().unwrap();
    assert_eq!(chosen, variant.name());
    let versions: Vec<&str> =
        key.strip_prefix("matmul tn m128 n128 k512 among ").expect(key).split(',').collect();
    let names: Vec<&str> = versions.iter().map(|v| v.split_once('@').expect(v).0).collect();
    assert_eq!(names, Variant::tunable().iter().map(|v| v.name()).collect::<Vec<_>>());
    // A choice made among fewer variants (before one was added), or before a kernel's source changed,
    // is timed again.
    let fewer = format!("matmul tn m128 n128 k512 among {}", versions[..versions.len() - 1].join(","));
    let mut edited = versions.clone();
    let retouched = format!("{}@0000000000000000", names[0]);
    edited[0] = &retouched;
    let edited = format!("matmul tn m128 n128 k512 among {}", edited.join(","));
    for old_key in [fewer, edited] {
        let old = serde_json::json!({ adapter.clone(): { old_key: "tile64" } });
        let old_path = dir.path().join("old").join(tune::FILE);
        std::fs::create_dir_all(old_path.parent().unwrap()).unwrap();
        std::fs::write(&old_path, old.to_string()).unwrap();
        assert!(matmul::choose(&mut tune::Tuner::open(Some(old_path)), &gpu, &shape).unwrap().1);
    }
    // A new process reads the file instead of timing again.
    let mut reopened = tune::Tuner::open(Some(path.clone()));
    assert_eq!(matmul::choose(&mut reopened, &gpu, &shape).unwrap(), (variant, false));
    // A damaged file only costs a new timing.
    std::fs::write(&path, "{ not json").unwrap();
    let mut fresh = tune::Tuner::open(Some(path.clone()));
    assert!(matmul::choose(&mut fresh, &gpu, &shape).unwrap().1);
    serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&path).unwrap()).unwrap();
}

/// Tuning checks each variant against the reference variant before timing it: every tunable variant
/// agrees at shapes that fill no tile evenly, in every layout, and a deliberately wrong kernel (a
/// product that drops the last step of k) is caught.
#[test]
fn every_variant_agrees_with_the_reference_and_a_wrong_one_is_caught() {
    let gpu = common::gpu();
    for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
        let shape = MatmulShape { m: 70, n: 130, k: 45, trans_a, trans_b, accumulate: false };
        for variant in Variant::tunable() {
            let candidate = |rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor| {
                matmul::matmul_with(rec, a, b, c, &shape, None, variant)
            };
            let found = matmul::disagreement(&gpu, &shape, Variant::Tile64, &candidate).unwrap();
            assert_eq!(found, None, "{} ({trans_a}, {trans_b})", variant.name());
        }
        let short = MatmulShape { k: shape.k - 1, ..shape };
        let wrong = |rec: &mut Recorder, a: &GpuTensor, b: &GpuTensor, c: &GpuTensor| {
            let (a, b) = (a.slice(0, (short.m * short.k) as usize), b.slice(0, (short.k * short.n) as usize));
            matmul::matmul_with(rec, &a, &b, c, &short, None, Variant::Tile128)
        };
        let found = matmul::disagreement(&gpu, &shape, Variant::Tile64, &wrong).unwrap();
        assert!(found.as_deref().is_some_and(|why| why.contains("where the reference has")), "{found:?}");
    }
}

/// However fast, a variant whose output disagrees with the reference's is never chosen.
#[test]
fn a_variant_that_disagrees_is_left_out() {
    let gpu = common::gpu();
    let mut tuner = tune::Tuner::open(None);
    let mut trial = |name: &str| {
        Ok(match name {
            "wrong" => tune::Trial::Disagrees("element 0 is 1 where the reference has 2".into()),
            "slow" => tune::Trial::Seconds(2.0),
            _ => tune::Trial::Seconds(1.0),
        })
    };
    let candidates = [("slow", 1), ("wrong", 2), ("right", 3)];
    let chosen = tuner.choose(&gpu, "a test class", &candidates, "slow", &mut trial).unwrap();
    assert_eq!(chosen, ("right".to_string(), true));
}
