//! Flash attention on the GPU against the f64 reference: forward (o, lse) and backward (dq, dk, dv), with
//! and without dropout, on shapes that fill no tile evenly; and the GPU's dropout mask read back exactly.

mod common;

use ncalm::gpu::{GpuTensor, KernelCache, Recorder, Shader};
use ncalm::ops::attention::{self, AttentionShape, BackwardTensors, Blocking, Dropout};
use ncalm::ops::testing::*;
use ncalm::ops::{cat_columns, split_columns};
use ncalm::Gpu;

// The GPU accumulates in f32: its absolute errors stay near 1e-6 of the values' scale (sums of at most a
// few hundred unit-scale products). `assert_close_f32` divides by |want| + 1e-3 rms(want), so elements
// near zero turn that into relative errors near 1e-3. The gradients have exact zeros that f32 leaves as
// residues (dQ of each sequence's first position, where dP - delta cancels), measured up to 3.5e-3 on
// lavapipe: hence 1e-2 on their maximum. The mean relative error, below 2e-5 everywhere measured, is
// held to 1e-4 so that no systematic error hides under the looser maximum.
const FORWARD_TOL: f64 = 1e-3;
const BACKWARD_TOL: f64 = 1e-2;
const MEAN_TOL: f64 = 1e-4;

struct Outputs {
    o: Vec<f32>,
    lse: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

fn upload(gpu: &Gpu, x: &[f64], label: &str) -> GpuTensor {
    gpu.upload(&to_f32(x), label).unwrap()
}

/// Runs forward then backward on the GPU.
fn run_gpu(
    gpu: &Gpu,
    cache: &KernelCache,
    inputs: [&[f64]; 4],
    shape: &AttentionShape,
    dropout: Option<Dropout>,
    (forward, backward): (Blocking, Blocking),
) -> Outputs {
    run_kernels(
        gpu,
        cache,
        inputs,
        shape,
        &|rec, qkv, o, lse| attention::forward_with(rec, qkv, o, lse, shape, dropout, forward).unwrap(),
        &|rec, grads| attention::backward_with(rec, grads, shape, dropout, backward).unwrap(),
    )
}

type Forward<'a> = &'a dyn Fn(&mut Recorder, &GpuTensor, &GpuTensor, &GpuTensor);
type Backward<'a> = &'a dyn Fn(&mut Recorder, &BackwardTensors);

/// Runs `forward` (given qkv, o and lse) then `backward` on the GPU.
fn run_kernels(
    gpu: &Gpu,
    cache: &KernelCache,
    inputs: [&[f64]; 4],
    shape: &AttentionShape,
    forward: Forward,
    backward: Backward,
) -> Outputs {
    let [q, k, v, d_o] = inputs;
    let width = (shape.heads * shape.head_dim) as usize;
    let (qkv, gdo) = (upload(gpu, &cat_columns(&[q, k, v], width), "qkv"), upload(gpu, d_o, "d_o"));
    let n = shape.activation_len();
    let rows = shape.row_stat_len();
    let tensor = |len, label| gpu.tensor(len, label).unwrap();
    let (o, lse, delta) = (tensor(n, "o"), tensor(rows, "lse"), tensor(rows, "delta"));
    let dqkv = tensor(shape.qkv_len(), "dqkv");
    // Stale gradients must be overwritten, not accumulated into.
    gpu.write(&dqkv, &vec![1e3f32; shape.qkv_len()]);
    let mut rec = Recorder::new(gpu, cache);
    forward(&mut rec, &qkv, &o, &lse);
    let grads = BackwardTensors { qkv: &qkv, o: &o, lse: &lse, d_o: &gdo, dqkv: &dqkv, delta: &delta };
    backward(&mut rec, &grads);
    rec.submit();
    let read = |t: &GpuTensor| gpu.read::<f32>(t).unwrap();
    let [dq, dk, dv]: [Vec<f32>; 3] = split_columns(&read(&dqkv), 3, width).try_into().unwrap();
    Outputs { o: read(&o), lse: read(&lse), dq, dk, dv }
}

fn check(gpu: &Gpu, cache: &KernelCache, shape: AttentionShape, dropout: Option<Dropout>) {
    let n = shape.activation_len();
    let seed = u64::from(shape.seq_len * 1000 + shape.head_dim);
    let (q, k, v, d_o) = (randn(n, seed), randn(n, seed + 1), randn(n, seed + 2), randn(n, seed + 3));
    let (o, lse) = attention::reference::forward(&q, &k, &v, &shape, dropout);
    let (dq, dk, dv) = attention::reference::backward(&q, &k, &v, &o, &lse, &d_o, &shape, dropout);
    // Each forward blocking the device runs, with a backward of another kind: all read the same O and LSE.
    for variants in blocking_pairs(gpu) {
        let got = run_gpu(gpu, cache, [&q, &k, &v, &d_o], &shape, dropout, variants);
        let tag = format!(
            "forward {} backward {} {}x{}x{}x{}{}",
            variants.0.name(),
            variants.1.name(),
            shape.batch,
            shape.seq_len,
            shape.heads,
            shape.head_dim,
            if dropout.is_some() { " drop" } else { "" }
        );
        let checks: [(&str, &[f32], &[f64], f64); 5] = [
            ("o", &got.o, &o, FORWARD_TOL),
            ("lse", &got.lse, &lse, FORWARD_TOL),
            ("dq", &got.dq, &dq, BACKWARD_TOL),
            ("dk", &got.dk, &dk, BACKWARD_TOL),
            ("dv", &got.dv, &dv, BACKWARD_TOL),
        ];
        for (name, got, want, tol) in checks {
            let e = assert_close_f32(&format!("{name} {tag}"), got, want, tol);
            assert!(
                e.mean <= MEAN_TOL,
                "{name} {tag}: mean relative error {:.3e} above {MEAN_TOL:.0e}",
                e.mean
            );
        }
    }
}

/// Every f32 blocking `gpu` runs as the forward, each followed by the next one as the backward, so that
/// every backward runs too, after another forward.
fn blocking_pairs(gpu: &Gpu) -> Vec<(Blocking, Blocking)> {
    for (blocking, why) in attention::BLOCKINGS.left_out_variants(gpu) {
        common::skipped(blocking.name(), &why);
    }
    let supported = attention::BLOCKINGS.supported(gpu);
    let all: Vec<Blocking> = Blocking::all().into_iter().filter(|b| supported.contains(b)).collect();
    (0..all.len()).map(|n| (all[n], all[(n + 1) % all.len()])).collect()
}

const SHAPES: [AttentionShape; 6] = [
    AttentionShape { batch: 2, seq_len: 37, heads: 3, head_dim: 12 },
    // Several 64-query blocks of the wide forward, the last partial.
    AttentionShape { batch: 1, seq_len: 150, heads: 2, head_dim: 36 },
    AttentionShape { batch: 1, seq_len: 70, heads: 2, head_dim: 20 },
    // Several query and key blocks, sequences x heads and head_dim chunks (100 = 3 x 32 + 4).
    AttentionShape { batch: 3, seq_len: 85, heads: 2, head_dim: 100 },
    // The largest head_dim, and sequences shorter than a block.
    AttentionShape { batch: 1, seq_len: 19, heads: 2, head_dim: 128 },
    AttentionShape { batch: 3, seq_len: 2, heads: 1, head_dim: 5 },
];

#[test]
fn attention_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    for shape in SHAPES {
        check(&gpu, &cache, shape, None);
    }
}

#[test]
fn attention_with_dropout_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    // Any pair whose GPU mask bit differs from the host's would put an error of order one in o and the
    // gradients, far above the tolerances.
    for (n, shape) in SHAPES.into_iter().enumerate() {
        check(&gpu, &cache, shape, Some(Dropout { p: 0.1, key: 0x0123_4567_89ab_cdef ^ n as u64 }));
    }
}

#[test]
fn gpu_dropout_mask_is_the_host_mask() {
    // With q = 0 every causal probability is 1 / (i + 1); with v_j the j-th unit vector, o_i[j] is then
    // M_ij / ((1 - p) (i + 1)): the mask itself, read back.
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let shape = AttentionShape { batch: 2, seq_len: 100, heads: 3, head_dim: 100 };
    let dropout = Dropout { p: 0.1, key: 0xfeed_f00d_dead_beef };
    let n = shape.activation_len();
    let d = shape.head_dim as usize;
    let q = vec![0.0; n];
    let position = |e: usize| e / d / shape.heads as usize % shape.seq_len as usize;
    let v: Vec<f64> = (0..n).map(|e| if position(e) == e % d { 1.0 } else { 0.0 }).collect();
    let width = (shape.heads * shape.head_dim) as usize;
    let qkv = upload(&gpu, &cat_columns(&[&q, &q, &v], width), "qkv");
    let (o, lse) = (gpu.tensor(n, "o").unwrap(), gpu.tensor(shape.row_stat_len(), "lse").unwrap());
    for variant in Blocking::all() {
        if let Some(why) = attention::BLOCKINGS.shortfall(&gpu, variant) {
            common::skipped(variant.name(), &why);
            continue;
        }
        let mut rec = Recorder::new(&gpu, &cache);
        attention::forward_with(&mut rec, &qkv, &o, &lse, &shape, Some(dropout), variant).unwrap();
        rec.submit();
        let o = gpu.read::<f32>(&o).unwrap();
        let (mut pairs, mut kept, mut mismatches) = (0u32, 0u32, 0u32);
        for b in 0..shape.batch {
            for h in 0..shape.heads {
                for i in 0..shape.seq_len {
                    let row = ((b * shape.seq_len + i) * shape.heads + h) as usize * d;
                    for j in 0..=i {
                        let gpu_keep = o[row + j as usize] * (1.0 - dropout.p) * (i + 1) as f32 > 0.5;
                        let host_keep = attention::keep(dropout.key, b, h, shape.heads, i, j, dropout.p);
                        pairs += 1;
                        kept += u32::from(gpu_keep);
                        mismatches += u32::from(gpu_keep != host_keep);
                    }
                }
            }
        }
        let rate = f64::from(kept) / f64::from(pairs);
        let name = variant.name();
        println!("{name}: {pairs} pairs, keep rate {rate:.4}, {mismatches} mismatches with the host mask");
        assert_eq!(mismatches, 0, "{name}: the GPU dropout mask differs from attention::keep");
        // 30300 pairs: the binomial standard deviation of the rate is 0.0017.
        assert!((rate - 0.9).abs() < 0.01, "{name}: keep rate {rate}, expected 0.9");
    }
}

#[test]
fn launchers_reject_bad_shapes() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let shape = AttentionShape { batch: 1, seq_len: 4, heads: 2, head_dim: 8 };
    let t = |len| gpu.tensor(len, "t").unwrap();
    let (qkv, x, rows) = (t(shape.qkv_len()), t(shape.activation_len()), t(shape.row_stat_len()));
    let mut rec = Recorder::new(&gpu, &cache);
    // q, k and v side by side make one tensor three times o's size.
    let err = attention::forward(&mut rec, &x, &x, &rows, &shape, None).unwrap_err();
    assert!(format!("{err}").contains("qkv has"), "{err}");
    let wide = AttentionShape { head_dim: 129, ..shape };
    assert!(attention::forward(&mut rec, &qkv, &x, &rows, &wide, None).is_err());
    let bad_p = Some(Dropout { p: 1.0, key: 0 });
    assert!(attention::forward(&mut rec, &qkv, &x, &rows, &shape, bad_p).is_err());
    let grads = BackwardTensors { qkv: &qkv, o: &x, lse: &rows, d_o: &x, dqkv: &qkv, delta: &x };
    let err = attention::backward(&mut rec, &grads, &shape, None).unwrap_err();
    assert!(format!("{err}").contains("delta has"), "{err}");
    assert_eq!(rec.dispatches(), 0);
}

/// Tuning's check before timing a blocking: each agrees with block16 in the forward and backward
/// passes, at a shape whose length fills no block evenly.
#[test]
fn every_blocking_agrees_with_the_reference() {
    let gpu = common::gpu();
    let shape = AttentionShape { batch: 2, seq_len: 70, heads: 2, head_dim: 16 };
    for pass in [attention::AttentionPass::Forward, attention::AttentionPass::Backward] {
        for (blocking, why) in attention::BLOCKINGS.left_out_variants(&gpu) {
            common::skipped(&format!("{} {pass:?}", blocking.name()), &why);
        }
        for blocking in attention::BLOCKINGS.supported(&gpu) {
            let found = attention::disagreement(&gpu, pass, &shape, Blocking::Block16, blocking).unwrap();
            assert_eq!(found, None, "{} {pass:?}", blocking.name());
        }
    }
}

/// The flash kernels (every build), forward and backward, against the f64 reference on the shapes they
/// were written for: head_dim 32 and 64, lengths that fill neither their 64-row blocks nor their tiles,
/// with and without dropout.
#[test]
fn flash_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let shapes = [
        AttentionShape { batch: 2, seq_len: 100, heads: 2, head_dim: 32 },
        AttentionShape { batch: 1, seq_len: 141, heads: 3, head_dim: 64 },
        AttentionShape { batch: 2, seq_len: 13, heads: 1, head_dim: 64 },
        // head_dim not a multiple of the 4 invocations per row, and the largest.
        AttentionShape { batch: 1, seq_len: 67, heads: 2, head_dim: 30 },
        AttentionShape { batch: 1, seq_len: 40, heads: 1, head_dim: 128 },
    ];
    let builds = [Blocking::Flash, Blocking::Flash32k, Blocking::FlashSubgroups, Blocking::Flash32kSubgroups];
    let runnable: Vec<Blocking> = attention::BLOCKINGS.supported(&gpu);
    for blocking in builds {
        if let Some(why) = attention::BLOCKINGS.shortfall(&gpu, blocking) {
            common::skipped(blocking.name(), &why);
        }
    }
    assert!(runnable.contains(&Blocking::Flash), "the 16 KiB build runs on every adapter");
    for (n, shape) in shapes.into_iter().enumerate() {
        let count = shape.activation_len();
        let seed = 7000 + 10 * n as u64;
        let (q, k, v, d_o) =
            (randn(count, seed), randn(count, seed + 1), randn(count, seed + 2), randn(count, seed + 3));
        for dropout in [None, Some(Dropout { p: 0.2, key: 0x0f1a_5400 ^ n as u64 })] {
            let (o, lse) = attention::reference::forward(&q, &k, &v, &shape, dropout);
            let (dq, dk, dv) = attention::reference::backward(&q, &k, &v, &o, &lse, &d_o, &shape, dropout);
            for blocking in builds.into_iter().filter(|b| runnable.contains(b)) {
                let got = run_gpu(&gpu, &cache, [&q, &k, &v, &d_o], &shape, dropout, (blocking, blocking));
                let tag = format!("{} {shape:?} dropout {}", blocking.name(), dropout.is_some());
                let checks: [(&str, &[f32], &[f64], f64); 5] = [
                    ("o", &got.o, &o, FORWARD_TOL),
                    ("lse", &got.lse, &lse, FORWARD_TOL),
                    ("dq", &got.dq, &dq, BACKWARD_TOL),
                    ("dk", &got.dk, &dk, BACKWARD_TOL),
                    ("dv", &got.dv, &dv, BACKWARD_TOL),
                ];
                for (name, got, want, tol) in checks {
                    let e = assert_close_f32(&format!("{name} {tag}"), got, want, tol);
                    assert!(e.mean <= MEAN_TOL, "{name} {tag}: mean relative error {:.3e}", e.mean);
                }
            }
        }
    }
}

/// A device that allows only the portable 16 KiB of workgroup memory runs the 16 KiB flash build, and
/// neither offers nor runs the 32 KiB one, refusing it with a reason; the device tests run on shows
/// which builds its own limit admits.
#[test]
fn flash_builds_follow_the_workgroup_memory_limit() {
    use ncalm::wgpu;
    let gpu = common::gpu();
    let limit = gpu.limits().max_compute_workgroup_storage_size;
    let supported = attention::BLOCKINGS.supported(&gpu);
    assert_eq!(supported.contains(&Blocking::Flash32k), limit >= 32 * 1024, "limit {limit}");
    assert!(supported.contains(&Blocking::Flash));

    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("an adapter");
    let limits = wgpu::Limits { max_compute_workgroup_storage_size: 16 * 1024, ..adapter.limits() };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("16 KiB of workgroup memory"),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("a device with the portable workgroup memory");
    let small = Gpu::from_device(device, queue);
    assert_eq!(small.limits().max_compute_workgroup_storage_size, 16 * 1024);
    let supported = attention::BLOCKINGS.supported(&small);
    assert!(
        supported.contains(&Blocking::Flash) && !supported.contains(&Blocking::Flash32k),
        "{supported:?}"
    );

    let cache = KernelCache::default();
    let shape = AttentionShape { batch: 1, seq_len: 21, heads: 2, head_dim: 32 };
    let count = shape.activation_len();
    let (q, k, v, d_o) = (randn(count, 91), randn(count, 92), randn(count, 93), randn(count, 94));
    let (want_o, want_lse) = attention::reference::forward(&q, &k, &v, &shape, None);
    let (dq, dk, dv) = attention::reference::backward(&q, &k, &v, &want_o, &want_lse, &d_o, &shape, None);
    let qkv = upload(&small, &cat_columns(&[&q, &k, &v], (shape.heads * shape.head_dim) as usize), "qkv");
    let (o, lse) = (small.tensor(count, "o").unwrap(), small.tensor(shape.row_stat_len(), "lse").unwrap());
    let mut rec = Recorder::new(&small, &cache);
    let err =
        attention::forward_with(&mut rec, &qkv, &o, &lse, &shape, None, Blocking::Flash32k).unwrap_err();
    assert!(format!("{err:#}").contains("workgroup memory"), "{err:#}");
    assert_eq!(rec.dispatches(), 0);
    let got = run_gpu(&small, &cache, [&q, &k, &v, &d_o], &shape, None, (Blocking::Flash, Blocking::Flash));
    for (name, got, want, tol) in [
        ("o", &got.o, &want_o, FORWARD_TOL),
        ("dq", &got.dq, &dq, BACKWARD_TOL),
        ("dk", &got.dk, &dk, BACKWARD_TOL),
        ("dv", &got.dv, &dv, BACKWARD_TOL),
    ] {
        assert_close_f32(&format!("{name} flash, 16 KiB device"), got, want, tol);
    }
}

/// Plain-WGSL stand-ins for `shaders/attention_coop_ops.wgsl`, with the same meaning, kept small enough
/// for a CPU adapter's shader compiler. An operand fragment is where its elements lie: (start, row
/// stride, array, transposed), the array `staged`, `weights`, or a private copy of a block of rows that
/// `load_block` makes (two at a time, as the kernels hold). An accumulator holds only the elements lane,
/// lane + width, ... of its 256 (element (r, c) at 16 r + c), where lane is an invocation's place among
/// the subgroup's `width` (8 or more, all active), which it forms and stores.
const EMULATED_OPS: &str = "
alias FragA = vec4<u32>;
alias FragB = vec4<u32>;
alias Sums = array<f32, 32>;
var<private> emu_blocks: array<f32, 2u * 16u * COOP_PITCH>;
var<private> emu_loaded: u32;
fn load_block(fragments: ptr<function, array<FragA, CHUNKS>>, block: u32) {
    let at = emu_loaded % 2u * 16u * COOP_PITCH;
    emu_loaded += 1u;
    for (var e = 0u; e < 16u * COOP_PITCH; e++) {
        emu_blocks[at + e] = f32(staged[block * 16u * COOP_PITCH + e]);
    }
    for (var c = 0u; c < CHUNKS; c++) {
        (*fragments)[c] = vec4<u32>(at + c * 16u, COOP_PITCH, 2u, 0u);
    }
}
fn staged_b(at: u32, stride: u32) -> FragB {
    return vec4<u32>(at, stride, 0u, 0u);
}
fn staged_bt(at: u32, stride: u32) -> FragB {
    return vec4<u32>(at, stride, 0u, 1u);
}
fn weights_a(at: u32, stride: u32) -> FragA {
    return vec4<u32>(at, stride, 1u, 0u);
}
fn emu_element(f: vec4<u32>, r: u32, c: u32) -> f32 {
    let i = f.x + select(r * f.y + c, c * f.y + r, f.w == 1u);
    if (f.z == 0u) {
        return f32(staged[i]);
    }
    if (f.z == 1u) {
        return f32(weights[i]);
    }
    return emu_blocks[i];
}
fn multiply_add(a: FragA, b: FragB, c: Sums) -> Sums {
    var sums = c;
    let width = subgroupAdd(1u);
    for (var e = subgroupExclusiveAdd(1u); e < 256u; e += width) {
        var sum = sums[e / width];
        for (var l = 0u; l < 16u; l++) {
            sum = fma(emu_element(a, e / 16u, l), emu_element(b, l, e % 16u), sum);
        }
        sums[e / width] = sum;
    }
    return sums;
}
fn store_sums(sums: Sums, at: u32, stride: u32) {
    var m = sums;
    let width = subgroupAdd(1u);
    for (var e = subgroupExclusiveAdd(1u); e < 256u; e += width) {
        scores[at + e / 16u * stride + e % 16u] = m[e / width];
    }
}
";

/// `shader` (a build of the cooperative-matrix kernels) with [`EMULATED_OPS`] in place of its
/// cooperative operations.
fn emulated(shader: &Shader) -> &'static Shader {
    emulated_with(shader, "", "")
}

/// [`emulated`] with `from` replaced by `to` in the kernels' source.
fn emulated_with(shader: &Shader, from: &str, to: &str) -> &'static Shader {
    let ops = include_str!("../shaders/attention_coop_ops.wgsl");
    let source = shader.full_source();
    assert!(source.contains(from), "{} no longer contains {from:?}", shader.name);
    let source = if from.is_empty() { source } else { source.replace(from, to) };
    assert!(source.contains(ops), "{} no longer includes attention_coop_ops.wgsl whole", shader.name);
    let source =
        source.replace(ops, EMULATED_OPS).replace("enable f16, wgpu_cooperative_matrix;", "enable f16;");
    for operation in ["coop_mat", "coopLoad", "coopStore", "coopMultiplyAdd"] {
        assert!(!source.contains(operation), "{operation} is left unemulated in {}", shader.name);
    }
    Box::leak(Box::new(Shader {
        name: Box::leak(
            format!("{}_emulated{}", shader.name, if from.is_empty() { "" } else { "_wrong" })
                .into_boxed_str(),
        ),
        source: Box::leak(source.into_boxed_str()),
        with_rng: false,
        consts: &[],
    }))
}

/// The largest error relative to the largest magnitude: the measure tuning holds variants to.
fn error_of_largest(got: &[f32], want: &[f64]) -> f64 {
    let largest = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let worst = got.iter().zip(want).fold(0.0f64, |m, (&g, w)| m.max((f64::from(g) - w).abs()));
    worst / largest
}

/// The cooperative-matrix kernels (`coop16`), forward and backward, against the f64 reference on
/// f16-rounded inputs, with and without dropout, on lengths that fill neither their 64-row blocks nor
/// their 32-row tiles, and head dimensions of both builds. Their own logic (staging, passes over the
/// blocks, both sweeps of the forward, the element-wise steps, the write-out) runs on any adapter with
/// f16 and subgroups, with the cooperative operations emulated; an adapter that has cooperative
/// matrices also runs the kernels themselves. The probabilities and score gradients are rounded to f16
/// before their products, which leaves errors near 1e-3 of the largest output.
#[test]
fn cooperative_kernels_match_the_reference() {
    use ncalm::wgpu::Features;
    const TOL: f64 = 4e-3;
    let gpu = common::gpu();
    if !gpu.features().contains(Features::SHADER_F16 | Features::SUBGROUP) {
        common::skipped("attention coop16", "the adapter lacks SHADER_F16 or SUBGROUP");
        return;
    }
    if gpu.adapter_info.subgroup_min_size < 8 {
        common::skipped("attention coop16 emulated", "the emulation needs subgroups of 8 or more");
        return;
    }
    let native = attention::cooperative_shortfall(&gpu);
    if let Some(why) = &native {
        common::skipped("attention coop16 on cooperative matrices (emulated instead)", why);
    }
    let cache = KernelCache::default();
    let shapes = [
        AttentionShape { batch: 1, seq_len: 70, heads: 2, head_dim: 20 },
        AttentionShape { batch: 2, seq_len: 37, heads: 1, head_dim: 64 },
        AttentionShape { batch: 1, seq_len: 33, heads: 1, head_dim: 100 },
    ];
    let to_f16 = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect() };
    for (n, shape) in shapes.into_iter().enumerate() {
        let count = shape.activation_len();
        let seed = 9100 + 10 * n as u64;
        let [q, k, v, d_o] = [0, 1, 2, 3].map(|i| to_f16(&randn(count, seed + i)));
        for dropout in [None, Some(Dropout { p: 0.2, key: 0xc00b ^ n as u64 })] {
            let (o, lse) = attention::reference::forward(&q, &k, &v, &shape, dropout);
            let (dq, dk, dv) = attention::reference::backward(&q, &k, &v, &o, &lse, &d_o, &shape, dropout);
            let mut runs = vec![];
            if native.is_none() {
                let pair = (Blocking::Coop16, Blocking::Coop16);
                runs.push(("coop16", run_gpu(&gpu, &cache, [&q, &k, &v, &d_o], &shape, dropout, pair)));
            }
            let build =
                attention::BLOCKINGS.entry(Blocking::Coop16).shaders[usize::from(shape.head_dim > 64)];
            let shader = emulated(&build);
            let emulation = run_kernels(
                &gpu,
                &cache,
                [&q, &k, &v, &d_o],
                &shape,
                &|rec, qkv, o, lse| {
                    attention::forward_on(rec, qkv, o, lse, &shape, dropout, Blocking::Coop16, shader)
                        .unwrap()
                },
                &|rec, grads| {
                    attention::backward_on(rec, grads, &shape, dropout, Blocking::Coop16, shader).unwrap()
                },
            );
            runs.push((shader.name, emulation));
            for (name, got) in runs {
                let tag = format!("{name} {shape:?} dropout {}", dropout.is_some());
                for (output, got, want) in [
                    ("o", &got.o, &o),
                    ("lse", &got.lse, &lse),
                    ("dq", &got.dq, &dq),
                    ("dk", &got.dk, &dk),
                    ("dv", &got.dv, &dv),
                ] {
                    let error = error_of_largest(got, want);
                    println!("{output} {tag}: error {error:.2e} of the largest");
                    assert!(
                        error <= TOL,
                        "{output} {tag}: error {error:.2e} of the largest, above {TOL:.0e}"
                    );
                }
            }
        }
    }
}

/// Tuning holds `coop16` to 1% of the largest output (f16's tolerance): a deliberately wrong build, one
/// that normalises the probabilities by the running maximum instead of the log-sum-exp, is far outside
/// it, while the right one is far inside.
#[test]
fn a_wrong_cooperative_kernel_is_caught_at_f16_tolerance() {
    use ncalm::wgpu::Features;
    let gpu = common::gpu();
    if !gpu.features().contains(Features::SHADER_F16 | Features::SUBGROUP)
        || gpu.adapter_info.subgroup_min_size < 8
    {
        common::skipped("attention coop16 emulated", "needs SHADER_F16 and subgroups of 8 or more");
        return;
    }
    let tolerance = f64::from(attention::agreement(Blocking::Coop16));
    assert_eq!(tolerance, f64::from(ncalm::ops::matmul::AGREEMENT_F16));
    let cache = KernelCache::default();
    let shape = AttentionShape { batch: 1, seq_len: 70, heads: 2, head_dim: 20 };
    let n = shape.activation_len();
    let (qkv, o, lse) = (
        upload(&gpu, &randn(shape.qkv_len(), 31), "qkv"),
        gpu.tensor(n, "o").unwrap(),
        gpu.tensor(shape.row_stat_len(), "lse").unwrap(),
    );
    let [q, k, v]: [Vec<f64>; 3] =
        split_columns(&to_f64(&gpu.read::<f32>(&qkv).unwrap()), 3, 40).try_into().unwrap();
    let (want, _) = attention::reference::forward(&q, &k, &v, &shape, None);
    let build = &attention::BLOCKINGS.entry(Blocking::Coop16).shaders[0];
    let right = emulated(build);
    let wrong = emulated_with(
        build,
        "let prob = exp(scores[r * COLS + col] * p.scale - row_lse);",
        "let prob = exp(scores[r * COLS + col] * p.scale - m_run);",
    );
    for (shader, caught) in [(right, false), (wrong, true)] {
        let mut rec = Recorder::new(&gpu, &cache);
        attention::forward_on(&mut rec, &qkv, &o, &lse, &shape, None, Blocking::Coop16, shader).unwrap();
        rec.submit();
        let error = error_of_largest(&gpu.read::<f32>(&o).unwrap(), &want);
        println!("{}: error {error:.2e} of the largest", shader.name);
        assert_eq!(
            error > tolerance,
            caught,
            "{}: error {error:.2e}, tolerance {tolerance:.0e}",
            shader.name
        );
    }
}
