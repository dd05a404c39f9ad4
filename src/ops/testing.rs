//! Test support shared by the op tests: random inputs, finite differences and error statistics.
//! Public so that integration tests and benchmarks can use it; not part of the stable API.

use crate::rng::{derive_key, Stream};

/// Standard normal values from a seed (deterministic).
pub fn randn(len: usize, seed: u64) -> Vec<f64> {
    let mut s = Stream::new(derive_key(seed, &[0x7e57]), 0);
    (0..len).map(|_| s.next_normal()).collect()
}

/// Uniform integers in 0..bound from a seed.
pub fn randint(len: usize, bound: u32, seed: u64) -> Vec<u32> {
    let mut s = Stream::new(derive_key(seed, &[0x1d5]), 0);
    (0..len).map(|_| ((u64::from(s.next_u32()) * u64::from(bound)) >> 32) as u32).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Central finite differences of a scalar function, in f64.
pub fn finite_difference(f: &dyn Fn(&[f64]) -> f64, x: &[f64], eps: f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = probe[i];
            probe[i] = orig + eps;
            let up = f(&probe);
            probe[i] = orig - eps;
            let down = f(&probe);
            probe[i] = orig;
            (up - down) / (2.0 * eps)
        })
        .collect()
}

/// `L = sum(r * y)`: the loss that places an op mid-graph (its incoming gradient is `r`, not ones).
pub fn weighted_sum(r: &[f64], y: &[f64]) -> f64 {
    r.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Relative errors |got - want| / (|want| + 1e-3 * rms(want) + 1e-12): max and mean.
#[derive(Clone, Copy, Debug)]
pub struct ErrorStats {
    pub max: f64,
    pub mean: f64,
    pub max_abs: f64,
}

pub fn error_stats(got: &[f64], want: &[f64]) -> ErrorStats {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let rms = (want.iter().map(|w| w * w).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let floor = 1e-3 * rms + 1e-12;
    let (mut max, mut sum, mut max_abs) = (0.0f64, 0.0, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        let abs = (g - w).abs();
        let rel = if abs.is_nan() { f64::INFINITY } else { abs / (w.abs() + floor) };
        max = max.max(rel);
        max_abs = max_abs.max(abs);
        sum += rel;
    }
    ErrorStats { max, mean: sum / got.len().max(1) as f64, max_abs }
}

/// Asserts `got` matches `want` (max relative error below `tol`) and prints both statistics.
#[track_caller]
pub fn assert_close(name: &str, got: &[f64], want: &[f64], tol: f64) -> ErrorStats {
    let e = error_stats(got, want);
    println!("{name:<32} max rel err {:.2e}  mean {:.2e}  max abs {:.2e}", e.max, e.mean, e.max_abs);
    assert!(e.max <= tol, "{name}: max relative error {:.3e} above {tol:.1e} (mean {:.3e})", e.max, e.mean);
    e
}

/// Asserts GPU f32 output matches an f64 reference.
#[track_caller]
pub fn assert_close_f32(name: &str, got: &[f32], want: &[f64], tol: f64) -> ErrorStats {
    assert_close(name, &to_f64(got), want, tol)
}
