// Philox4x32-10, the WGSL twin of src/rng.rs: same words for the same (key, counter) on every device.

const PHILOX_M0: u32 = 0xD2511F53u;
const PHILOX_M1: u32 = 0xCD9E8D57u;
const PHILOX_W0: u32 = 0x9E3779B9u;
const PHILOX_W1: u32 = 0xBB67AE85u;

// High and low words of the 64-bit product a * b, from 16-bit halves (WGSL has no 64-bit integers).
fn mul_hi_lo(a: u32, b: u32) -> vec2<u32> {
    let a_lo = a & 0xFFFFu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xFFFFu;
    let b_hi = b >> 16u;
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let cross = (lo_lo >> 16u) + (hi_lo & 0xFFFFu) + lo_hi;
    let hi = a_hi * b_hi + (hi_lo >> 16u) + (cross >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(key_in: vec2<u32>, counter: vec4<u32>) -> vec4<u32> {
    var k = key_in;
    var c = counter;
    for (var round = 0u; round < 10u; round++) {
        if (round > 0u) {
            k = k + vec2<u32>(PHILOX_W0, PHILOX_W1);
        }
        let p0 = mul_hi_lo(PHILOX_M0, c.x);
        let p1 = mul_hi_lo(PHILOX_M1, c.z);
        c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    }
    return c;
}

// Top 24 bits in [0, 1), exact.
fn unit_f32(word: u32) -> f32 {
    return f32(word >> 8u) * (1.0 / 16777216.0);
}

// Top 23 bits in [2^-24, 1 - 2^-24], exact.
fn open_unit_f32(word: u32) -> f32 {
    return (f32(word >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// -ln(-ln u); the clamp guards against inexact logarithms near 1 (see src/rng.rs).
fn gumbel(word: u32) -> f32 {
    return -log(max(-log(open_unit_f32(word)), 1.0 / 16777216.0));
}
