// One Adam / AdamW step (PyTorch semantics, gradients.md "Optimiser"), one thread per parameter, with
// global-norm clipping folded in: the clip factor comes from norm_sq[0], the sum of squared gradients
// already reduced on the GPU, so clipping needs no trip to the host.

struct Params {
    n: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    decoupled: u32,
    max_norm: f32,
    grad_scale: f32,
    // 1 - beta^t, computed on the host in f64.
    bias_correction1: f32,
    bias_correction2: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> norm_sq: array<f32>;

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    var clip = 1.0;
    if (p.max_norm > 0.0) {
        clip = min(1.0, p.max_norm / (sqrt(norm_sq[0]) + 1e-6));
    }
    var g = clip * grad[i] * p.grad_scale;
    var w = param[i];
    if (p.decoupled != 0u) {
        w -= p.lr * p.weight_decay * w;
    } else {
        // Adam's L2 penalty enters the gradient, and so the moments.
        g += p.weight_decay * w;
    }
    let m_new = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let v_new = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    let m_hat = m_new / p.bias_correction1;
    let v_hat = v_new / p.bias_correction2;
    param[i] = w - p.lr * m_hat / (sqrt(v_hat) + p.eps);
}
