// Pointwise activations of the cell MLP (ReLU, GELU with the tanh approximation, SiLU) and their
// backward passes. Element-wise over n values; 256 per workgroup, workgroups linearised over x and y.
// `act` selects the function (0 ReLU, 1 GELU, 2 SiLU); it is uniform, so the switch does not diverge.

struct Params {
    n: u32,
    act: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y_or_dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;

const ACT_RELU: u32 = 0u;
const ACT_GELU: u32 = 1u;

// sqrt(2 / pi) and the cubic coefficient of the tanh approximation.
const GELU_K: f32 = 0.7978845608028654;
const GELU_C: f32 = 0.044715;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 256u + lid;
}

// exp overflows to +inf for very negative v, which gives exactly 0: no NaN at either end.
fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

// GELU's 0.5 (1 + tanh(z)) written as sigmoid(2z): the same value without the cancellation of 1 + tanh
// for negative z, and without relying on the precision of the built-in tanh.
fn gelu_gate(v: f32) -> f32 {
    return sigmoid(2.0 * GELU_K * (v + GELU_C * v * v * v));
}

fn activate(v: f32) -> f32 {
    switch p.act {
        case ACT_RELU: {
            return max(v, 0.0);
        }
        case ACT_GELU: {
            return v * gelu_gate(v);
        }
        default: {
            return v * sigmoid(v);
        }
    }
}

// d activate / dv. GELU: with s = sigmoid(2z), 1 - tanh(z)^2 = 4 s (1 - s), so
// d/dv [0.5 v (1 + tanh z)] = s + 2 v s (1 - s) z'.
fn derivative(v: f32) -> f32 {
    switch p.act {
        case ACT_RELU: {
            return select(0.0, 1.0, v > 0.0);
        }
        case ACT_GELU: {
            let s = gelu_gate(v);
            let dz = GELU_K * (1.0 + 3.0 * GELU_C * v * v);
            return s + 2.0 * v * s * (1.0 - s) * dz;
        }
        default: {
            let s = sigmoid(v);
            return s * (1.0 + v * (1.0 - s));
        }
    }
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    y_or_dy[i] = activate(x[i]);
}

// dx may be the same buffer range as dy: each invocation reads dy[i] before it writes dx[i].
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let g = y_or_dy[i];
    dx[i] = g * derivative(x[i]);
}
