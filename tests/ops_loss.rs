//! The loss and the optimiser on the GPU against their f64 references: fused cross-entropy with ignored
//! and out-of-range targets (including a 64000-word vocabulary with large logits), the deterministic
//! reductions, and Adam/AdamW steps with clipping fed by a GPU sum of squares.
//!
//! Inputs are rounded to f32 before the reference sees them, so the errors measure the kernels only.

mod common;

use ncalm::gpu::{GpuTensor, KernelCache, Recorder};
use ncalm::ops::cross_entropy::{self, IGNORE};
use ncalm::ops::testing::*;
use ncalm::ops::{adamw, reduce};
use ncalm::Gpu;

fn rounded(v: &[f64]) -> Vec<f64> {
    to_f64(&to_f32(v))
}

/// Runs the fused op on the GPU and compares losses and dlogits with the reference.
/// Tolerances: each gradient value is one exp(z - lse) with lse accumulated in f32 over the row, so it
/// carries a few ulps of |z - lse| (a few 1e-6 relative; 1e-4 leaves room for other devices' exp). Each
/// loss is the difference lse - z, which cancels when the target dominates its row: its absolute error is
/// a few ulps of |lse|, up to ~1e-5 relative to losses as small as 0.05 (hence 1e-4 for the losses too).
fn check_cross_entropy(gpu: &Gpu, name: &str, logits: &[f64], targets: &[u32], vocab: usize) {
    let cache = KernelCache::default();
    let rows = targets.len();
    let counted = targets.iter().filter(|&&t| (t as usize) < vocab).count();
    let scale = 1.0 / counted as f64;
    let glogits = gpu.upload(&to_f32(logits), "logits").unwrap();
    let gtargets = gpu.upload(targets, "targets").unwrap();
    let glosses = gpu.tensor(rows, "losses").unwrap();
    // The same with a loss scale of 2^10 read from the GPU: the gradient exactly 2^10 times larger.
    let (scaled_logits, scaled_losses) =
        (gpu.upload(&to_f32(logits), "logits").unwrap(), gpu.tensor(rows, "l").unwrap());
    let loss_scale = gpu.upload(&[1024.0f32], "loss scale").unwrap();
    let mut rec = Recorder::new(gpu, &cache);
    let (r, v, sc) = (rows as u32, vocab as u32, scale as f32);
    cross_entropy::forward_backward(&mut rec, &glogits, &gtargets, &glosses, r, v, sc, None).unwrap();
    let ls = Some(&loss_scale);
    cross_entropy::forward_backward(&mut rec, &scaled_logits, &gtargets, &scaled_losses, r, v, sc, ls)
        .unwrap();
    rec.submit();
    let (want_losses, want_dlogits) =
        cross_entropy::reference::forward_backward(logits, targets, rows, vocab, scale);
    let losses = gpu.read::<f32>(&glosses).unwrap();
    let dlogits = gpu.read::<f32>(&glogits).unwrap();
    assert_close_f32(&format!("{name} losses"), &losses, &want_losses, 1e-4);
    assert_close_f32(&format!("{name} dlogits"), &dlogits, &want_dlogits, 1e-4);
    assert_eq!(gpu.read::<f32>(&scaled_losses).unwrap(), losses, "{name}: losses under a loss scale");
    let scaled: Vec<f32> = gpu.read::<f32>(&scaled_logits).unwrap();
    assert!(scaled.iter().zip(&dlogits).all(|(s, d)| *s == d * 1024.0), "{name}: dlogits under a loss scale");
    for (row, &t) in targets.iter().enumerate() {
        if t as usize >= vocab {
            assert_eq!(losses[row], 0.0, "{name}: ignored row {row} has a loss");
            assert!(
                dlogits[row * vocab..(row + 1) * vocab].iter().all(|&d| d == 0.0),
                "{name}: ignored row {row}"
            );
        }
    }
}

/// The AdamW settings the optimiser tests start from: decoupled decay, clipping at norm 20, step 1.
fn adam() -> adamw::AdamParams {
    adamw::AdamParams {
        lr: 0.01,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
        decoupled: true,
        max_norm: 20.0,
        grad_scale: 1.0,
        step: 1,
    }
}

#[test]
fn cross_entropy_matches_the_reference_with_ignored_and_out_of_range_targets() {
    let (rows, vocab) = (37, 1003);
    let logits: Vec<f64> = rounded(&randn(rows * vocab, 1).iter().map(|v| 3.0 * v).collect::<Vec<_>>());
    let ignore = randint(rows, 10, 2);
    let mut targets: Vec<u32> = randint(rows, vocab as u32, 3)
        .iter()
        .zip(&ignore)
        .map(|(&t, &i)| if i < 3 { IGNORE } else { t })
        .collect();
    targets[5] = vocab as u32 + 5; // out of range: must count as ignored and write nothing past the row
    targets[0] = 0;
    targets[rows - 1] = vocab as u32 - 1; // the last column, which only a partly filled stride reaches
    let ignored = targets.iter().filter(|&&t| t as usize >= vocab).count();
    println!("{ignored} of {rows} rows ignored");
    assert!((8..=16).contains(&ignored), "the ignore mask should cover about 30% of the rows");
    for (build, gpu) in common::reduction_gpus() {
        check_cross_entropy(&gpu, &format!("ce 37x1003 ({build})"), &logits, &targets, vocab);
    }
}

#[test]
fn cross_entropy_is_stable_for_a_large_vocabulary_and_large_logits() {
    let (rows, vocab) = (4, 64000);
    // Logits in [-30, 30]; row 3 is shifted by +60 so that exp(z) alone would overflow f32.
    let mut logits: Vec<f64> = randn(rows * vocab, 4).iter().map(|v| (12.0 * v).clamp(-30.0, 30.0)).collect();
    for z in &mut logits[3 * vocab..] {
        *z += 60.0;
    }
    let logits = rounded(&logits);
    let argmax = |row: usize| {
        let z = &logits[row * vocab..(row + 1) * vocab];
        (0..vocab).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap() as u32
    };
    let argmin = |row: usize| {
        let z = &logits[row * vocab..(row + 1) * vocab];
        (0..vocab).min_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap() as u32
    };
    // A confident hit, a confident miss (loss ~ 60), a random target, and the shifted row's worst target.
    let targets = [argmax(0), argmin(1), 12345, argmin(3)];
    for (build, gpu) in common::reduction_gpus() {
        check_cross_entropy(&gpu, &format!("ce 4x64000 ({build})"), &logits, &targets, vocab);
    }
}

#[test]
fn cross_entropy_covers_more_rows_than_one_grid_dimension() {
    // 70000 rows need workgroups along y (grid_1d), and the over-dispatched tail must write nothing.
    let gpu = common::gpu();
    let (rows, vocab) = (70_000, 3);
    let logits = rounded(&randn(rows * vocab, 5));
    let targets = randint(rows, vocab as u32 + 1, 6); // the value `vocab` is out of range: ignored
    check_cross_entropy(&gpu, "ce 70000x3", &logits, &targets, vocab);
}

fn reduce_on_gpu(gpu: &Gpu, x: &[f64]) -> (f32, f32) {
    let cache = KernelCache::default();
    let gx = gpu.upload(&to_f32(x), "x").unwrap();
    let scratch = gpu.tensor(reduce::scratch_len(x.len()), "scratch").unwrap();
    let (sum, squares) = (gpu.tensor(1, "sum").unwrap(), gpu.tensor(1, "sum of squares").unwrap());
    let mut rec = Recorder::new(gpu, &cache);
    reduce::sum(&mut rec, &gx, &sum, &scratch).unwrap();
    reduce::sum_squares(&mut rec, &gx, &squares, &scratch).unwrap();
    rec.submit();
    (gpu.read::<f32>(&sum).unwrap()[0], gpu.read::<f32>(&squares).unwrap()[0])
}

#[test]
fn reductions_match_the_reference_and_repeat_exactly() {
    for (build, gpu) in common::reduction_gpus() {
        println!("{build}");
        reductions_case(&gpu);
    }
}

fn reductions_case(gpu: &Gpu) {
    assert_eq!(reduce_on_gpu(gpu, &[]), (0.0, 0.0), "an empty tensor sums to 0");
    // 4096 and 4097 straddle one stage-1 block; 100003 spans 25 blocks, the last one partial.
    for (seed, len) in [1, 257, 4096, 4097, 100_003].into_iter().enumerate() {
        // A mean of 0.5 keeps the sum well away from 0, so a relative tolerance means something.
        let x = rounded(&randn(len, 10 + seed as u64).iter().map(|v| v + 0.5).collect::<Vec<_>>());
        let (sum, squares) = reduce_on_gpu(gpu, &x);
        // f32 sums in blocks of <= 32 terms joined by 256-wide trees: error ~ log2(n) * 6e-8 relative to the
        // sum of magnitudes, well under 1e-5 of these sums.
        assert_close_f32(&format!("sum of {len}"), &[sum], &[reduce::reference::sum(&x)], 1e-5);
        assert_close_f32(
            &format!("sum of squares of {len}"),
            &[squares],
            &[reduce::reference::sum_squares(&x)],
            1e-5,
        );
        let again = reduce_on_gpu(gpu, &x);
        assert_eq!(again.0.to_bits(), sum.to_bits(), "sum of {len} differs between runs");
        assert_eq!(again.1.to_bits(), squares.to_bits(), "sum of squares of {len} differs between runs");
    }
}

#[test]
fn reductions_check_their_buffers() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let x = gpu.tensor(5000, "x").unwrap();
    let (out, small, empty) =
        (gpu.tensor(1, "out").unwrap(), gpu.tensor(1, "small").unwrap(), gpu.tensor(0, "e").unwrap());
    let mut rec = Recorder::new(&gpu, &cache);
    let err = reduce::sum(&mut rec, &x, &out, &small).unwrap_err().to_string();
    assert!(err.contains("scratch_len"), "{err}");
    assert!(reduce::sum_squares(&mut rec, &x, &empty, &gpu.tensor(2, "s").unwrap()).is_err());
}

struct AdamState {
    param: GpuTensor,
    grad: GpuTensor,
    m: GpuTensor,
    v: GpuTensor,
    norm_sq: GpuTensor,
    scratch: GpuTensor,
}

#[test]
fn adam_and_adamw_steps_match_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let n = 1000;
    // sqrt(sum g^2) is about sqrt(1000) ~ 32 for unit normal gradients: max_norm 5 clips, 1e3 and 0 do not.
    for (case, (decoupled, max_norm)) in
        [(true, 5.0), (true, 1e3), (false, 5.0), (false, 1e3), (true, 0.0)].into_iter().enumerate()
    {
        let base = 100 * case as u64;
        let mut param = rounded(&randn(n, base + 1));
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let s = AdamState {
            param: gpu.upload(&to_f32(&param), "param").unwrap(),
            grad: gpu.tensor(n, "grad").unwrap(),
            m: gpu.tensor(n, "m").unwrap(),
            v: gpu.tensor(n, "v").unwrap(),
            norm_sq: gpu.tensor(1, "norm_sq").unwrap(),
            scratch: gpu.tensor(reduce::scratch_len(n), "scratch").unwrap(),
        };
        for t in 1..=5u64 {
            let grad_scale = if case % 2 == 0 { 0.5 } else { 1.0 };
            let p = adamw::AdamParams { decoupled, max_norm, grad_scale, step: t, ..adam() };
            let grad = rounded(&randn(n, base + 10 + t));
            gpu.write(&s.grad, &to_f32(&grad));
            let mut rec = Recorder::new(&gpu, &cache);
            reduce::sum_squares(&mut rec, &s.grad, &s.norm_sq, &s.scratch).unwrap();
            adamw::step(&mut rec, &s.param, &s.grad, &s.m, &s.v, &s.norm_sq, &p).unwrap();
            rec.submit();
            let norm_sq = reduce::reference::sum_squares(&grad);
            if max_norm > 0.0 {
                assert_eq!(norm_sq.sqrt() > f64::from(max_norm), max_norm < 100.0, "clipping as intended");
            }
            adamw::reference::step(&mut param, &grad, &mut m, &mut v, norm_sq, &p);
            // Per element a handful of f32 operations on values of order 1, and the clip factor carries
            // the reduction's ~1e-7: params and v (a sum of positive terms) stay within a few 1e-6
            // relative. m is a running difference of terms of order |g|, so entries near 0 keep an
            // absolute error of a few ulps of |g| (~1e-8), which the relative measure (floored at
            // 1e-3 rms) reads as up to ~1e-4.
            let name = format!("adam decoupled={decoupled} max_norm={max_norm} t={t}");
            assert_close_f32(&format!("{name} param"), &gpu.read::<f32>(&s.param).unwrap(), &param, 1e-5);
            assert_close_f32(&format!("{name} m"), &gpu.read::<f32>(&s.m).unwrap(), &m, 1e-3);
            assert_close_f32(&format!("{name} v"), &gpu.read::<f32>(&s.v).unwrap(), &v, 1e-5);
        }
    }
}

/// The fused step over one buffer of several tensors: spans with and without weight decay, one longer
/// than a block, one left out (a frozen tensor) and gaps between them, which must all stay as they were.
#[test]
fn one_dispatch_updates_every_span_as_its_own_step_would() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    // (start, len, decay, updated): gaps at 0..3, 12..16, 5019..5024 and after 5030.
    let layout = [(3, 9, false, true), (16, adamw::BLOCK + 907, true, true), (5024, 6, true, false)];
    let n = 5040;
    let spans: Vec<adamw::Span> = layout
        .iter()
        .filter(|l| l.3)
        .map(|&(start, len, decay, _)| adamw::Span { start, len, decay })
        .collect();
    let blocks = adamw::Blocks::new(&gpu, &spans).unwrap();
    let mut param = rounded(&randn(n, 7));
    let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
    let gparam = gpu.upload(&to_f32(&param), "param").unwrap();
    let (gm, gv, ggrad) =
        (gpu.tensor(n, "m").unwrap(), gpu.tensor(n, "v").unwrap(), gpu.tensor(n, "grad").unwrap());
    let norm_sq = gpu.tensor(1, "norm_sq").unwrap();
    for decoupled in [true, false] {
        for t in 1..=3u64 {
            let p = adamw::AdamParams { decoupled, step: t, ..adam() };
            let grad = rounded(&randn(n, 50 + t));
            let total = 1e3;
            gpu.write(&ggrad, &to_f32(&grad));
            gpu.write(&norm_sq, &[total as f32]);
            let mut rec = Recorder::new(&gpu, &cache);
            adamw::step_all(&mut rec, &blocks, &gparam, &ggrad, &gm, &gv, &norm_sq, None, &p).unwrap();
            assert_eq!(rec.dispatches(), 1);
            rec.submit();
            for &(start, len, decay, updated) in &layout {
                if !updated {
                    continue;
                }
                let r = start..start + len;
                let mut q = p;
                q.weight_decay = if decay { p.weight_decay } else { 0.0 };
                let (pr, mr, vr) = (&mut param[r.clone()], &mut m[r.clone()], &mut v[r.clone()]);
                adamw::reference::step(pr, &grad[r], mr, vr, total, &q);
            }
            let name = format!("fused adam decoupled={decoupled} t={t}");
            // Untouched elements are compared exactly: the reference leaves them as uploaded.
            assert_close_f32(&format!("{name} param"), &gpu.read::<f32>(&gparam).unwrap(), &param, 1e-5);
            assert_close_f32(&format!("{name} m"), &gpu.read::<f32>(&gm).unwrap(), &m, 1e-3);
            assert_close_f32(&format!("{name} v"), &gpu.read::<f32>(&gv).unwrap(), &v, 1e-5);
            let read = gpu.read::<f32>(&gparam).unwrap();
            for i in (0..3).chain(12..16).chain(5019..n) {
                assert_eq!(f64::from(read[i]), param[i], "element {i} outside the spans moved");
            }
        }
    }
    let overlapping =
        [adamw::Span { start: 0, len: 8, decay: true }, adamw::Span { start: 4, len: 8, decay: true }];
    let err = adamw::Blocks::new(&gpu, &overlapping).err().expect("overlap refused").to_string();
    assert!(err.contains("span 1"), "{err}");
    let short = gpu.tensor(5000, "short").unwrap();
    let p = adamw::AdamParams { weight_decay: 0.0, max_norm: 0.0, ..adam() };
    let mut rec = Recorder::new(&gpu, &cache);
    let err =
        adamw::step_all(&mut rec, &blocks, &short, &short, &short, &short, &norm_sq, None, &p).unwrap_err();
    assert!(err.to_string().contains("reaches element 5019"), "{err}");
}

/// Half-precision training's side of the optimiser: gradients of a loss scaled by 2^10 (and their norm,
/// by 2^20) give the unscaled step, and gradients that overflowed leave parameters and moments as they were.
#[test]
fn a_scaled_step_divides_the_loss_scale_out_and_an_overflow_changes_nothing() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let n = 3000;
    let blocks = adamw::Blocks::new(&gpu, &[adamw::Span { start: 0, len: n, decay: true }]).unwrap();
    let (param, grad) = (to_f32(&randn(n, 31)), to_f32(&randn(n, 32)));
    // Moments part-way through a run: m any sign, v positive.
    let (m0, v0): (Vec<f32>, Vec<f32>) = (to_f32(&randn(n, 33)), param.iter().map(|p| p * p).collect());
    let norm_sq: f32 = grad.iter().map(|g| g * g).sum();
    let p = adam();
    let run = |grad: &[f32], norm_sq: f32, loss_scale: Option<f32>| {
        let (gp, gg) = (gpu.upload(&param, "p").unwrap(), gpu.upload(grad, "g").unwrap());
        let (gm, gv) = (gpu.upload(&m0, "m").unwrap(), gpu.upload(&v0, "v").unwrap());
        let gn = gpu.upload(&[norm_sq], "norm_sq").unwrap();
        let scale = loss_scale.map(|s| gpu.upload(&[s], "loss scale").unwrap());
        let mut rec = Recorder::new(&gpu, &cache);
        adamw::step_all(&mut rec, &blocks, &gp, &gg, &gm, &gv, &gn, scale.as_ref(), &p).unwrap();
        rec.submit();
        [&gp, &gm, &gv].map(|t| gpu.read::<f32>(t).unwrap())
    };
    let plain = run(&grad, norm_sq, None);
    let scaled_grad: Vec<f32> = grad.iter().map(|g| g * 1024.0).collect();
    let scaled = run(&scaled_grad, norm_sq * 1024.0 * 1024.0, Some(1024.0));
    for (name, (a, b)) in ["param", "m", "v"].iter().zip(plain.iter().zip(&scaled)) {
        assert_close_f32(&format!("scaled step: {name}"), b, &to_f64(a), 1e-6);
    }
    assert_ne!(plain[0], param, "the step moved the parameters");
    for overflow in [f32::INFINITY, f32::NAN] {
        let after = run(&scaled_grad, overflow, Some(1024.0));
        assert_eq!(after[0], param, "an overflowed step ({overflow}) moved the parameters");
        assert_eq!(after[1], m0, "an overflowed step ({overflow}) moved m");
        assert_eq!(after[2], v0, "an overflowed step ({overflow}) moved v");
    }
}

/// The loss scale's update kernel against its reference over a run of clean and overflowing steps: it
/// halves on an overflow (not below 1), doubles after `interval` clean steps, and unscales the norm.
#[test]
fn the_loss_scale_backs_off_on_overflow_and_grows_after_clean_steps() {
    use ncalm::ops::loss_scale::{reference_update, LossScale, ScaleState};
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let interval = 3;
    let scale = LossScale::new(&gpu, 4.0, interval).unwrap();
    let mut want = ScaleState { scale: 4.0, clean_steps: 0, skipped: 0, last_skipped: false };
    assert_eq!(scale.read(&gpu).unwrap(), want);
    let norm_sq = gpu.tensor(1, "norm_sq").unwrap();
    let inf = f32::INFINITY;
    let norms = [64.0, 16.0, 32.0, 48.0, inf, f32::NAN, inf, inf, 8.0, 12.0, 4.0, 20.0];
    for (step, &squares) in norms.iter().enumerate() {
        gpu.write(&norm_sq, &[squares]);
        let mut rec = Recorder::new(&gpu, &cache);
        scale.update(&mut rec, &norm_sq).unwrap();
        rec.submit();
        let (next, logged) = reference_update(want, squares, interval);
        want = next;
        assert_eq!(scale.read(&gpu).unwrap(), want, "state after step {step} (norm^2 {squares})");
        let got = gpu.read::<f32>(&norm_sq).unwrap()[0];
        assert!(
            got == logged || (got.is_nan() && logged.is_nan()),
            "step {step}: logged norm^2 {got}, want {logged}"
        );
    }
    // The run covered growth (4 -> 8 after three clean steps), back-off to the floor of 1, and growth again.
    assert_eq!(want.skipped, 4);
    assert_eq!(want.scale, 2.0);
    assert!(LossScale::new(&gpu, 0.5, interval).is_err());
}

#[test]
fn adam_rejects_a_step_of_zero_and_mismatched_tensors() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let t = |n| gpu.tensor(n, "t").unwrap();
    let mut p = adamw::AdamParams {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        decoupled: true,
        max_norm: 1.0,
        grad_scale: 1.0,
        step: 0,
    };
    let mut rec = Recorder::new(&gpu, &cache);
    assert!(adamw::step(&mut rec, &t(4), &t(4), &t(4), &t(4), &t(1), &p).is_err());
    p.step = 1;
    assert!(adamw::step(&mut rec, &t(4), &t(3), &t(4), &t(4), &t(1), &p).is_err());
    assert!(adamw::step(&mut rec, &t(4), &t(4), &t(4), &t(4), &t(1), &p).is_ok());
}

/// The optimiser's gradient norm over a role split into chunks: the sum of squares of the trained
/// tensors (a frozen one left out) against the f64 reference, and bit for bit the same whatever the
/// chunk size, since every block lies inside one tensor. Both reduction builds.
#[test]
fn the_norm_of_a_chunked_role_is_the_same_for_any_chunk_size() {
    let lens = [5usize, adamw::BLOCK * 2 + 17, 300, adamw::BLOCK, 1, 9000];
    let frozen = 2;
    let values: Vec<Vec<f64>> =
        lens.iter().enumerate().map(|(i, &n)| rounded(&randn(n, 70 + i as u64))).collect();
    let want: f64 =
        values.iter().enumerate().filter(|(i, _)| *i != frozen).flat_map(|(_, v)| v).map(|g| g * g).sum();
    for (build, gpu) in common::reduction_gpus() {
        let cache = KernelCache::default();
        let mut norms = Vec::new();
        // One chunk, two, and three (the largest tensor is 36000 bytes).
        for limit in [None, Some(64 << 10), Some(36 << 10)] {
            let gpu = match limit {
                Some(bytes) => gpu.clone().with_chunk_limit(bytes),
                None => gpu.clone(),
            };
            let names: Vec<String> = (0..lens.len()).map(|i| format!("t{i}")).collect();
            let role =
                ncalm::gpu::role_arena(&gpu, "grads", names.iter().map(String::as_str).zip(lens)).unwrap();
            for (t, v) in role.iter().zip(&values) {
                gpu.write(t, &to_f32(v));
            }
            let plan = adamw::Plan::new(&gpu, &role, |i| (i != frozen).then_some(true)).unwrap();
            let out = gpu.tensor(1, "norm_sq").unwrap();
            let mut rec = Recorder::new(&gpu, &cache);
            plan.norm_sq(&mut rec, &role, &out).unwrap();
            rec.submit();
            let got = gpu.read::<f32>(&out).unwrap()[0];
            println!(
                "{build}, chunk limit {limit:?}: {} chunks, norm^2 {got} (f64 {want})",
                role.chunks.len()
            );
            assert!((f64::from(got) - want).abs() / want < 1e-5, "{build}: norm^2 {got}, reference {want}");
            norms.push((role.chunks.len(), got));
        }
        assert!(norms[0].0 == 1 && norms[1].0 > 1 && norms[2].0 > norms[1].0, "chunks: {norms:?}");
        assert!(norms.iter().all(|&(_, n)| n.to_bits() == norms[0].1.to_bits()), "{build}: {norms:?}");
    }
}
