//! The WGSL Philox equals the Rust one word for word; float conversions agree.

mod common;

use ncalm::gpu::probe_rng;
use ncalm::rng::{derive_key, gumbel, open_unit_f32, philox, unit_f32};

#[test]
fn wgsl_and_rust_rng_agree() {
    let gpu = common::gpu();
    let mut cases = vec![(0u64, [0u32; 4]), (u64::MAX, [u32::MAX; 4])];
    for i in 0..4093u64 {
        let key = derive_key(i, &[7]);
        let w = philox(key ^ 0x55, [i as u32, 3, 1, 4]);
        cases.push((key, w));
    }
    let got = probe_rng(&gpu, &cases).unwrap();
    let mut worst_gumbel = 0.0f32;
    for ((key, counter), probe) in cases.iter().zip(&got) {
        let words = philox(*key, *counter);
        assert_eq!(probe.words, words, "key {key:#x} counter {counter:?}");
        assert_eq!(probe.unit, unit_f32(words[0]));
        assert_eq!(probe.open_unit, open_unit_f32(words[1]));
        let g = gumbel(words[2]);
        worst_gumbel = worst_gumbel.max((probe.gumbel - g).abs());
    }
    // GPU logarithms carry an absolute error near 1 (Vulkan allows 2^-21), which reaches the Gumbel
    // sample as an absolute error of that size over -ln u; Gumbel-max only cares at near-ties.
    assert!(worst_gumbel < 1e-3, "gumbel differs by {worst_gumbel}");
    println!("{} Philox blocks identical; worst Gumbel difference {worst_gumbel:e}", cases.len());
}
