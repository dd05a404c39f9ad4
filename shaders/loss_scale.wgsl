// Dynamic loss scaling for half-precision training, kept on the GPU so a step needs no host round-trip.
// state: [scale (f32 bits), steps since the last overflow, steps skipped in all, whether the last step
// was skipped]. The loss gradient is multiplied by the scale (cross_entropy.wgsl) and the optimiser
// divides it out (adamw.wgsl), skipping the step when the gradients overflowed. After the optimiser,
// `update` halves the scale on an overflow, doubles it after `interval` clean steps, and turns the
// squared gradient norm back into that of the unscaled gradients for the logs.

struct Params {
    interval: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> state: array<u32>;
@group(0) @binding(2) var<storage, read_write> norm_sq: array<f32>;

// MAX_SCALE, the largest scale, is prepended from src/ops/loss_scale.rs.

// Neither infinite nor NaN, by the exponent bits (which no fast-math rewrite can drop).
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(1)
fn update() {
    let scale = bitcast<f32>(state[0]);
    let squares = norm_sq[0];
    if (!finite(squares)) {
        state[0] = bitcast<u32>(max(scale * 0.5, 1.0));
        state[1] = 0u;
        state[2] += 1u;
        state[3] = 1u;
        return;
    }
    norm_sq[0] = squares / (scale * scale);
    var clean = state[1] + 1u;
    if (clean >= p.interval) {
        state[0] = bitcast<u32>(min(scale * 2.0, MAX_SCALE));
        clean = 0u;
    }
    state[1] = clean;
    state[3] = 0u;
}
