//! The one counter-based random number generator of ncalm: Philox4x32-10 (Salmon et al., SC'11).
//!
//! A draw is a pure function of (key, counter), so the CPU and every GPU kernel can produce the same
//! numbers in any order and in parallel. `shaders/rng.wgsl` is the WGSL twin of this file; tests check that
//! both give bit-identical words. Keys are 64-bit and derived from a run's seed with [`derive_key`] so that
//! rules, simulations and later dropout masks draw from disjoint streams.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: four independent uniform 32-bit words.
pub fn philox(key: u64, counter: [u32; 4]) -> [u32; 4] {
    let mut k = [key as u32, (key >> 32) as u32];
    let mut c = counter;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        c = [(p1 >> 32) as u32 ^ c[1] ^ k[0], p1 as u32, (p0 >> 32) as u32 ^ c[3] ^ k[1], p0 as u32];
    }
    c
}

/// SplitMix64 finaliser: a bijective 64-bit mix used to derive keys.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a stream key from a parent key and a path of integers (e.g. seed, split, rule, attempt).
pub fn derive_key(parent: u64, path: &[u64]) -> u64 {
    path.iter().fold(mix64(parent ^ 0x6A09_E667_F3BC_C908), |acc, &p| {
        mix64(acc.wrapping_add(0x9E37_79B9_7F4A_7C15) ^ mix64(p))
    })
}

/// The top 24 bits as a float in [0, 1). Exact in f32, identical on every device.
pub fn unit_f32(word: u32) -> f32 {
    (word >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The top 23 bits as a float in [2^-24, 1 - 2^-24]: open at both ends and exact in f32.
pub fn open_unit_f32(word: u32) -> f32 {
    ((word >> 9) as f32 + 0.5) * (1.0 / 8_388_608.0)
}

/// A standard Gumbel sample, -ln(-ln u), from one word. The inner value is clamped at its exact minimum
/// -ln(1 - 2^-24) ~ 2^-24 because GPU logarithms near 1 carry an absolute error larger than that and
/// could otherwise return 0 (an infinite sample); on exact hardware the clamp changes nothing.
pub fn gumbel(word: u32) -> f32 {
    -(-open_unit_f32(word).ln()).max(GUMBEL_TINY).ln()
}

const GUMBEL_TINY: f32 = 1.0 / 16_777_216.0;

/// Bounds of [`gumbel`] over all inputs (exactly -2.8116 and 16.6355), with slack for inexact GPU
/// logarithms. Gumbel-max sampling uses them to skip noise for candidates no noise can lift to the top.
pub const GUMBEL_MIN: f32 = -2.85;
pub const GUMBEL_MAX: f32 = 16.7;

/// A sequential reader of one Philox stream: blocks (key, [i, 0, 0, domain]) for i = 0, 1, 2, ...
/// Used on the CPU for draws whose count is not fixed (rejection sampling).
pub struct Stream {
    key: u64,
    domain: u32,
    block: u32,
    buffered: [u32; 4],
    used: usize,
}

impl Stream {
    pub fn new(key: u64, domain: u32) -> Self {
        Self { key, domain, block: 0, buffered: [0; 4], used: 4 }
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.used == 4 {
            self.buffered = philox(self.key, [self.block, 0, 0, self.domain]);
            self.block += 1;
            self.used = 0;
        }
        self.used += 1;
        self.buffered[self.used - 1]
    }

    /// Uniform in (0, 1) with 53 random bits.
    pub fn next_open_f64(&mut self) -> f64 {
        let hi = u64::from(self.next_u32() >> 5);
        let lo = u64::from(self.next_u32() >> 6);
        ((hi << 26 | lo) as f64 + 0.5) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// Standard normal by the Box-Muller transform (one of the pair; simplicity over speed).
    pub fn next_normal(&mut self) -> f64 {
        let u1 = self.next_open_f64();
        let u2 = self.next_open_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Standard normal truncated to [-bound, bound] by rejection.
    pub fn next_truncated_normal(&mut self, bound: f64) -> f64 {
        loop {
            let x = self.next_normal();
            if x.abs() <= bound {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer tests published with Random123 (kat_vectors, philox4x32 with 10 rounds).
    #[test]
    fn philox_known_answers() {
        assert_eq!(philox(0, [0; 4]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox(u64::MAX, [u32::MAX; 4]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
        let key = 0xa409_3822 | (0x299f_31d0_u64 << 32);
        assert_eq!(
            philox(key, [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn gumbel_bounds_hold_at_the_extremes() {
        for word in [0u32, 0xFF, 0x100, u32::MAX, u32::MAX - 0x100] {
            let g = gumbel(word);
            assert!((GUMBEL_MIN..=GUMBEL_MAX).contains(&g), "{word:#x} -> {g}");
        }
        assert!(gumbel(0) < GUMBEL_MIN + 0.05 && gumbel(u32::MAX) > GUMBEL_MAX - 0.1);
    }

    #[test]
    fn derived_keys_differ_and_repeat() {
        let a = derive_key(7, &[0, 1, 2]);
        assert_eq!(a, derive_key(7, &[0, 1, 2]));
        assert_ne!(a, derive_key(7, &[0, 2, 1]));
        assert_ne!(a, derive_key(8, &[0, 1, 2]));
        assert_ne!(derive_key(7, &[]), derive_key(7, &[0]));
    }

    #[test]
    fn normal_moments() {
        let mut s = Stream::new(derive_key(1, &[]), 9);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| s.next_normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.01, "mean {mean} var {var}");
        let t: Vec<f64> = (0..n).map(|_| s.next_truncated_normal(2.0)).collect();
        assert!(t.iter().all(|x| x.abs() <= 2.0));
        // Variance of a standard normal truncated to [-2, 2] is 0.87962566^2 = 0.773741.
        let tv = t.iter().map(|x| x * x).sum::<f64>() / n as f64;
        assert!((tv - 0.773_741).abs() < 0.01, "truncated variance {tv}");
    }
}
