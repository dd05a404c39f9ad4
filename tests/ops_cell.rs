//! The NCA cell kernels on the GPU against their f64 references: the MLP's pointwise activations and
//! the stochastic residual state update, on lengths that fill no workgroup evenly.

mod common;

use ncalm::gpu::{KernelCache, Recorder};
use ncalm::ops::activation::{self, Activation};
use ncalm::ops::cell_update;
use ncalm::ops::testing::*;

/// The values the GPU actually sees, so the comparison measures the kernels and not input rounding.
fn rounded(v: &[f64]) -> Vec<f64> {
    to_f64(&to_f32(v))
}

#[test]
fn activations_match_the_reference_forward_backward_and_in_place() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let n = 70_001;
    // Scaled to 3 so the tails of GELU and SiLU (large |x|, where exp overflows) are exercised too.
    let x: Vec<f64> = randn(n, 11).iter().map(|v| 3.0 * v).collect();
    let (x, dy) = (rounded(&x), rounded(&randn(n, 12)));
    let gx = gpu.upload(&to_f32(&x), "x").unwrap();
    let gdy = gpu.upload(&to_f32(&dy), "dy").unwrap();
    for act in [Activation::Relu, Activation::Gelu, Activation::Silu] {
        let y = gpu.tensor(n, "y").unwrap();
        let dx = gpu.tensor(n, "dx").unwrap();
        let dy_in_place = gpu.upload(&to_f32(&dy), "dy in place").unwrap();
        let mut rec = Recorder::new(&gpu, &cache);
        activation::forward(&mut rec, &gx, &y, act).unwrap();
        activation::backward(&mut rec, &gx, &gdy, &dx, act).unwrap();
        activation::backward(&mut rec, &gx, &dy_in_place, &dy_in_place, act).unwrap();
        rec.submit();
        let name = act.name();
        // f32 exp and a division: a few ulp per value (forward ~1e-6 measured on lavapipe). The
        // derivatives of GELU and SiLU cross zero (x ~ -0.75, -1.28), where cancellation leaves an
        // absolute error of a few ulp of O(1) terms; error_stats' floor (1e-3 rms) turns that into
        // ~4e-5 relative on lavapipe, and GPUs with coarser exp may double it. ReLU is exact.
        let tol = if act == Activation::Relu { 0.0 } else { 3e-4 };
        let want_dx = activation::reference::backward(&x, &dy, act);
        let got_y = gpu.read::<f32>(&y).unwrap();
        assert_close_f32(&format!("{name} forward"), &got_y, &activation::reference::forward(&x, act), tol);
        assert_close_f32(&format!("{name} backward"), &gpu.read::<f32>(&dx).unwrap(), &want_dx, tol);
        let in_place = gpu.read::<f32>(&dy_in_place).unwrap();
        assert_eq!(in_place, gpu.read::<f32>(&dx).unwrap(), "{name}: in-place backward differs");
    }
}

#[test]
fn activation_lengths_are_checked() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (a, b) = (gpu.tensor(10, "a").unwrap(), gpu.tensor(11, "b").unwrap());
    let mut rec = Recorder::new(&gpu, &cache);
    let err = activation::forward(&mut rec, &a, &b, Activation::Gelu).unwrap_err();
    assert!(err.to_string().contains("gelu"), "{err}");
    assert!(activation::backward(&mut rec, &a, &a, &b, Activation::Relu).is_err());
}

#[test]
fn cell_update_matches_the_reference() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (cells, channels, key, step) = (1000usize, 37usize, 0x5eed_ce11_u64 << 20, 9u32);
    let n = cells * channels;
    let (h, u, dh_next) = (rounded(&randn(n, 21)), rounded(&randn(n, 22)), rounded(&randn(n, 23)));
    let gh = gpu.upload(&to_f32(&h), "h").unwrap();
    let gu = gpu.upload(&to_f32(&u), "u").unwrap();
    let gdh_next = gpu.upload(&to_f32(&dh_next), "dh_next").unwrap();
    for fire_rate in [0.5f32, 1.0] {
        let (h_next, dh, du) =
            (gpu.tensor(n, "h_next").unwrap(), gpu.tensor(n, "dh").unwrap(), gpu.tensor(n, "du").unwrap());
        let mut rec = Recorder::new(&gpu, &cache);
        let (c, ch) = (cells as u32, channels as u32);
        cell_update::forward(&mut rec, &gh, &gu, &h_next, c, ch, key, step, fire_rate).unwrap();
        cell_update::backward(&mut rec, &gdh_next, &dh, &du, c, ch, key, step, fire_rate).unwrap();
        rec.submit();
        let want = cell_update::reference::forward(&h, &u, cells, channels, key, step, fire_rate);
        let (want_dh, want_du) =
            cell_update::reference::backward(&dh_next, cells, channels, key, step, fire_rate);
        // One f32 addition of exact inputs: correctly rounded, so within 2^-24 relative.
        let tag = format!("fire rate {fire_rate}");
        assert_close_f32(
            &format!("cell update h_next, {tag}"),
            &gpu.read::<f32>(&h_next).unwrap(),
            &want,
            1e-6,
        );
        // The gradients are copies or zeros: exact.
        assert_close_f32(&format!("cell update dh, {tag}"), &gpu.read::<f32>(&dh).unwrap(), &want_dh, 0.0);
        assert_close_f32(&format!("cell update du, {tag}"), &gpu.read::<f32>(&du).unwrap(), &want_du, 0.0);
    }
}

#[test]
fn gpu_fire_mask_equals_keep_and_fires_at_the_rate() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let (cells, channels, key, step) = (1000u32, 37u32, 0xfeed_beef_1234_u64, 41u32);
    let n = (cells * channels) as usize;
    // h = 0 and u = 1 read the mask (1 / fire_rate where a cell fires) back as h_next.
    let h = gpu.upload(&vec![0f32; n], "h").unwrap();
    let u = gpu.upload(&vec![1f32; n], "u").unwrap();
    let h_next = gpu.tensor(n, "h_next").unwrap();
    for fire_rate in [0.5f32, 0.2, 1.0, 0.0] {
        let mut rec = Recorder::new(&gpu, &cache);
        cell_update::forward(&mut rec, &h, &u, &h_next, cells, channels, key, step, fire_rate).unwrap();
        rec.submit();
        let got = gpu.read::<f32>(&h_next).unwrap();
        let mut fired = 0usize;
        for cell in 0..cells {
            let want = if cell_update::keep(key, cell, step, fire_rate) { 1.0 / fire_rate } else { 0.0 };
            let row = &got[(cell * channels) as usize..((cell + 1) * channels) as usize];
            assert!(
                // WGSL's division may be off by a few ulp.
                row.iter().all(|&m| (m - want).abs() <= 1e-6 * want),
                "fire rate {fire_rate}: cell {cell} mask {row:?}, want {want}"
            );
            fired += usize::from(want != 0.0);
        }
        // Binomial(1000, p): 5 standard deviations is at most 80 cells.
        let expected = f64::from(fire_rate) * f64::from(cells);
        let sd = (expected * (1.0 - f64::from(fire_rate))).sqrt();
        println!("fire rate {fire_rate}: {fired} of {cells} cells fired");
        assert!(
            (fired as f64 - expected).abs() <= 5.0 * sd,
            "fire rate {fire_rate}: {fired} of {cells} fired"
        );
    }
    // Another step draws another mask.
    let differs =
        (0..cells).any(|c| cell_update::keep(key, c, step, 0.5) != cell_update::keep(key, c, step + 1, 0.5));
    assert!(differs, "the mask does not depend on the step");
}

#[test]
fn cell_update_checks_shapes_and_fire_rate() {
    let gpu = common::gpu();
    let cache = KernelCache::default();
    let t = gpu.tensor(12, "t").unwrap();
    let mut rec = Recorder::new(&gpu, &cache);
    assert!(cell_update::forward(&mut rec, &t, &t, &t, 3, 4, 1, 0, 0.5).is_ok());
    let err = cell_update::forward(&mut rec, &t, &t, &t, 3, 5, 1, 0, 0.5).unwrap_err().to_string();
    assert!(err.contains("expected 3 x 5"), "{err}");
    assert!(cell_update::backward(&mut rec, &t, &t, &t, 3, 4, 1, 0, 1.5).is_err());
}
