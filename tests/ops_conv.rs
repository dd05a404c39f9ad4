//! The NCA's neighbourhood convolutions on the GPU against the f64 reference, forward and backward, on
//! shapes that fill no workgroup or row block evenly, and with the accumulate flag.
//!
//! Tolerance: 1e-3 relative for every tensor. The reference is f64 on the same f32-rounded inputs, so the
//! errors are f32 accumulation alone: forward values and dx are sums of up to 9 x 12 = 108 products of unit
//! normals (magnitude ~10) and the weight and bias gradients sums over up to 720 rows in two stages, which
//! leaves absolute errors around 1e-5. Outputs that cancel to near zero turn that into relative errors up to
//! ~2e-4 against `error_stats`'s floor of 1e-3 x rms; 1e-3 leaves headroom while still catching any wrong
//! term (a missing or misplaced product is an O(1) error).

mod common;

use ncalm::gpu::{GpuTensor, KernelCache, Recorder};
use ncalm::ops::conv::{self, reference, CausalConvShape, TorusConvShape};
use ncalm::ops::testing::*;
use ncalm::ops::Accumulate;
use ncalm::Gpu;

const TOL: f64 = 1e-3;

/// Normal values that f32 holds exactly, so the reference sees the GPU's inputs and the errors measured
/// are the kernels' rounding alone.
fn randn_f32(len: usize, seed: u64) -> Vec<f64> {
    to_f64(&to_f32(&randn(len, seed)))
}

fn upload(gpu: &Gpu, data: &[f64], label: &str) -> GpuTensor {
    gpu.upload(&to_f32(data), label).unwrap()
}

/// Checks the written gradients `got` (dx, the weight's gradient named `weight`, dbias) against the
/// reference's `want`.
fn assert_grads(gpu: &Gpu, name: &str, weight: &str, got: [&GpuTensor; 3], want: [&[f64]; 3]) {
    for ((label, t), w) in ["dx", weight, "dbias"].into_iter().zip(got).zip(want) {
        assert_close_f32(&format!("{name} {label}"), &gpu.read::<f32>(t).unwrap(), w, TOL);
    }
}

/// Checks a gradient added to `prior` (`label` accumulated) against `prior + want`.
fn assert_accumulated(gpu: &Gpu, label: &str, got: &GpuTensor, prior: &[f64], want: &[f64]) {
    let sum: Vec<f64> = prior.iter().zip(want).map(|(p, q)| p + q).collect();
    assert_close_f32(&format!("{label} accumulated"), &gpu.read::<f32>(got).unwrap(), &sum, TOL);
}

fn check_causal(gpu: &Gpu, shape: CausalConvShape) {
    let cache = KernelCache::default();
    let CausalConvShape { batch, seq_len, channels, width } = shape;
    let n = (batch * seq_len * channels) as usize;
    let (wl, ch) = ((width * channels) as usize, channels as usize);
    let (x, dy) = (randn_f32(n, 21), randn_f32(n, 22));
    let (kernel, bias) = (randn_f32(wl, 23), randn_f32(ch, 24));
    let (gx, gdy, gk, gb) = (
        upload(gpu, &x, "x"),
        upload(gpu, &dy, "dy"),
        upload(gpu, &kernel, "kernel"),
        upload(gpu, &bias, "bias"),
    );
    let y = gpu.tensor(n, "y").unwrap();
    let dx = gpu.tensor(n, "dx").unwrap();
    // Prior gradients, to check that accumulate adds to them.
    let (prior_k, prior_b) = (randn_f32(wl, 25), randn_f32(ch, 26));
    let (dk, db) = (upload(gpu, &prior_k, "dkernel"), upload(gpu, &prior_b, "dbias"));
    let (dk_acc, db_acc) = (upload(gpu, &prior_k, "dkernel acc"), upload(gpu, &prior_b, "dbias acc"));
    let scratch = gpu.tensor(conv::causal_scratch_len(&shape), "scratch").unwrap();

    // A prior dx too, for the run that adds to every gradient.
    let prior_x = randn_f32(n, 27);
    let dx_acc = upload(gpu, &prior_x, "dx acc");
    let (write, add) = (Accumulate::default(), Accumulate { dx: true, dw: true });
    let mut rec = Recorder::new(gpu, &cache);
    conv::causal_forward(&mut rec, &gx, &gk, &gb, &y, &shape).unwrap();
    conv::causal_backward(&mut rec, &gdy, &gx, &gk, &dx, &dk, &db, &scratch, &shape, write).unwrap();
    conv::causal_backward(&mut rec, &gdy, &gx, &gk, &dx_acc, &dk_acc, &db_acc, &scratch, &shape, add)
        .unwrap();
    rec.submit();

    let name = format!("causal {batch}x{seq_len}x{channels} w{width}");
    let want_y = reference::causal_forward(&x, &kernel, &bias, &shape);
    assert_close_f32(&format!("{name} y"), &gpu.read::<f32>(&y).unwrap(), &want_y, TOL);
    let (rdx, rdk, rdb) = reference::causal_backward(&dy, &x, &kernel, &shape);
    assert_grads(gpu, &name, "dkernel", [&dx, &dk, &db], [&rdx, &rdk, &rdb]);
    assert_accumulated(gpu, &format!("{name} dkernel"), &dk_acc, &prior_k, &rdk);
    assert_accumulated(gpu, &format!("{name} dbias"), &db_acc, &prior_b, &rdb);
    assert_accumulated(gpu, &format!("{name} dx"), &dx_acc, &prior_x, &rdx);
}

fn check_torus(gpu: &Gpu, shape: TorusConvShape) {
    let cache = KernelCache::default();
    let TorusConvShape { grids, grid, cin, cout } = shape;
    let cells = (grids * grid * grid) as usize;
    let (nin, nout, wl) = (cells * cin as usize, cells * cout as usize, 9 * (cin * cout) as usize);
    let (x, dy) = (randn_f32(nin, 31), randn_f32(nout, 32));
    let (weight, bias) = (randn_f32(wl, 33), randn_f32(cout as usize, 34));
    let (gx, gdy, gw, gb) = (
        upload(gpu, &x, "x"),
        upload(gpu, &dy, "dy"),
        upload(gpu, &weight, "weight"),
        upload(gpu, &bias, "bias"),
    );
    let y = gpu.tensor(nout, "y").unwrap();
    let dx = gpu.tensor(nin, "dx").unwrap();
    let (prior_w, prior_b) = (randn_f32(wl, 35), randn_f32(cout as usize, 36));
    let (dw, db) = (upload(gpu, &prior_w, "dweight"), upload(gpu, &prior_b, "dbias"));
    let (dw_acc, db_acc) = (upload(gpu, &prior_w, "dweight acc"), upload(gpu, &prior_b, "dbias acc"));
    let scratch = gpu.tensor(conv::torus_scratch_len(&shape), "scratch").unwrap();

    let mut rec = Recorder::new(gpu, &cache);
    conv::torus_forward(&mut rec, &gx, &gw, &gb, &y, &shape).unwrap();
    conv::torus_backward(&mut rec, &gdy, &gx, &gw, &dx, &dw, &db, &scratch, &shape, false).unwrap();
    conv::torus_backward(&mut rec, &gdy, &gx, &gw, &dx, &dw_acc, &db_acc, &scratch, &shape, true).unwrap();
    rec.submit();

    let name = format!("torus {grids}x{grid}^2 {cin}->{cout}");
    let want_y = reference::torus_forward(&x, &weight, &bias, &shape);
    assert_close_f32(&format!("{name} y"), &gpu.read::<f32>(&y).unwrap(), &want_y, TOL);
    let (rdx, rdw, rdb) = reference::torus_backward(&dy, &x, &weight, &shape);
    assert_grads(gpu, &name, "dweight", [&dx, &dw, &db], [&rdx, &rdw, &rdb]);
    assert_accumulated(gpu, &format!("{name} dweight"), &dw_acc, &prior_w, &rdw);
    assert_accumulated(gpu, &format!("{name} dbias"), &db_acc, &prior_b, &rdb);
}

#[test]
fn causal_conv_matches_the_reference() {
    let gpu = common::gpu();
    // Small and awkward: width above the sequence length.
    check_causal(&gpu, CausalConvShape { batch: 2, seq_len: 3, channels: 5, width: 4 });
    // 390 rows (7 row blocks, the last partial), 6 x 37 = 222 gradient columns, 14430 elements.
    check_causal(&gpu, CausalConvShape { batch: 3, seq_len: 130, channels: 37, width: 5 });
    // Wider than one workgroup of gradient columns (2 tiles).
    check_causal(&gpu, CausalConvShape { batch: 2, seq_len: 70, channels: 67, width: 4 });
}

#[test]
fn torus_conv_matches_the_reference() {
    let gpu = common::gpu();
    check_torus(&gpu, TorusConvShape { grids: 2, grid: 7, cin: 5, cout: 9 });
    // 720 cells (12 row blocks), 9 x 12 x 4 + 4 = 436 gradient columns (2 tiles), the paper's rule shape.
    check_torus(&gpu, TorusConvShape { grids: 5, grid: 12, cin: 12, cout: 4 });
    check_torus(&gpu, TorusConvShape { grids: 3, grid: 2, cin: 3, cout: 2 });
}

#[test]
fn backward_is_deterministic() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let shape = TorusConvShape { grids: 5, grid: 12, cin: 12, cout: 4 };
    let cells = 5 * 144;
    let (x, dy, weight) = (randn_f32(cells * 12, 41), randn_f32(cells * 4, 42), randn_f32(9 * 48, 43));
    let (gx, gdy, gw) = (upload(&gpu, &x, "x"), upload(&gpu, &dy, "dy"), upload(&gpu, &weight, "weight"));
    let scratch = gpu.tensor(conv::torus_scratch_len(&shape), "scratch").unwrap();
    let run = || -> Vec<f32> {
        let (dx, dw, db) = (
            gpu.tensor(cells * 12, "dx").unwrap(),
            gpu.tensor(9 * 48, "dw").unwrap(),
            gpu.tensor(4, "db").unwrap(),
        );
        let mut rec = Recorder::new(&gpu, &cache);
        conv::torus_backward(&mut rec, &gdy, &gx, &gw, &dx, &dw, &db, &scratch, &shape, false).unwrap();
        rec.submit();
        [dx, dw, db].iter().flat_map(|t| gpu.read::<f32>(t).unwrap()).collect()
    };
    let first = run();
    assert!(first.iter().zip(run()).all(|(a, b)| a.to_bits() == b.to_bits()), "runs differ");
}

#[test]
fn launchers_reject_wrong_lengths() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let shape = CausalConvShape { batch: 2, seq_len: 3, channels: 4, width: 2 };
    let t = |n: usize| gpu.tensor(n, "t").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    let err = conv::causal_forward(&mut rec, &t(24), &t(7), &t(4), &t(24), &shape).unwrap_err();
    assert!(format!("{err:#}").contains("kernel"), "{err:#}");
    let err = conv::causal_backward(
        &mut rec,
        &t(24),
        &t(24),
        &t(8),
        &t(24),
        &t(8),
        &t(4),
        &t(1),
        &shape,
        Accumulate::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("scratch"), "{err:#}");
    let torus = TorusConvShape { grids: 1, grid: 3, cin: 2, cout: 3 };
    let err = conv::torus_forward(&mut rec, &t(18), &t(54), &t(3), &t(18), &torus).unwrap_err();
    assert!(format!("{err:#}").contains("y has 18"), "{err:#}");
}
