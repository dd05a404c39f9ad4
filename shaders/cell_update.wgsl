// The stochastic residual state update of the cellular automaton:
//   h_next[cell][c] = h[cell][c] + m(cell) * u[cell][c],
// with m(cell) = 1 / fire_rate (so the expected update stays u) where
// unit_f32(philox(key, (cell, step, 0, 6)).x) < fire_rate (the twin of `cell_update::keep`), else 0.
// The mask is recomputed, never stored, so forward and backward agree exactly.
// Element-wise over cells * channels values, one value per invocation; 256 per workgroup, workgroups
// linearised over x and y. Needs shaders/rng.wgsl prepended (philox, unit_f32).

struct Params {
    cells: u32,
    channels: u32,
    key_lo: u32,
    key_hi: u32,
    step: u32,
    fire_rate: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Forward: h, u, h_next. Backward: dh_next, dh, du.
@group(0) @binding(1) var<storage, read_write> h_or_dh_next: array<f32>;
@group(0) @binding(2) var<storage, read_write> u_or_dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> h_next_or_du: array<f32>;

// The last Philox counter word: keeps this mask's stream apart from other uses of a key.

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

fn mask(cell: u32) -> f32 {
    let word = philox(vec2<u32>(p.key_lo, p.key_hi), vec4<u32>(cell, p.step, 0u, CELL_UPDATE_DOMAIN)).x;
    // A rate of 0 never fires, so its infinite gain is never selected.
    return select(0.0, 1.0 / p.fire_rate, unit_f32(word) < p.fire_rate);
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.cells * p.channels) {
        return;
    }
    h_next_or_du[i] = h_or_dh_next[i] + mask(i / p.channels) * u_or_dh[i];
}

// dh = dh_next (the identity path), du = m * dh_next. dh may be the same buffer range as dh_next:
// each invocation reads dh_next[i] before writing.
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.cells * p.channels) {
        return;
    }
    let g = h_or_dh_next[i];
    u_or_dh[i] = g;
    h_next_or_du[i] = mask(i / p.channels) * g;
}
