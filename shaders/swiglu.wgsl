// SwiGLU: h = silu(a) * b, and its backward (docs/gradients.md), with a and b side by side in each row of
// one [rows, 2 * hidden] matrix, as the fused gate and up projection writes them (gate_up), and their
// gradients likewise (d_gate_up). Element-wise over the n values of h; 256 per workgroup, workgroups
// linearised over x and y.

struct Params {
    n: u32,
    hidden: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gate_up: array<f32>;
@group(0) @binding(2) var<storage, read_write> h_or_dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_gate_up: array<f32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// Where element i of h finds its a in gate_up; its b lies `hidden` further on.
fn gate_at(i: u32) -> u32 {
    return i + (i / p.hidden) * p.hidden;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let at = gate_at(i);
    let x = gate_up[at];
    h_or_dh[i] = x * sigmoid(x) * gate_up[at + p.hidden];
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let at = gate_at(i);
    let x = gate_up[at];
    let s = sigmoid(x);
    let g = h_or_dh[i];
    d_gate_up[at] = g * gate_up[at + p.hidden] * s * (1.0 + x * (1.0 - s));
    d_gate_up[at + p.hidden] = g * x * s;
}
