// One Adam / AdamW step (PyTorch semantics, docs/gradients.md "Optimiser"), with global-norm clipping folded
// in: the clip factor comes from norm_sq[0], the sum of squared gradients already reduced on the GPU, so
// clipping needs no trip to the host.
// step: one tensor, one thread per parameter. step_blocks: every tensor of a model in one dispatch, over
// buffers that hold them all at the same offsets; workgroup g updates block g of the table (first
// element, end, whether weight decay applies), so frozen tensors and alignment gaps are simply not listed.
// With a loss scale (half-precision training, loss_scale.wgsl) step_blocks divides it out of the
// gradients and their norm, and leaves everything as it was when the gradients overflowed.

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
    // step_blocks: whether the gradients carry the loss scale in binding 7.
    scaled: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> norm_sq: array<f32>;
@group(0) @binding(6) var<storage, read_write> blocks: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> loss_scale: array<f32>;

// The clip factor of gradients whose norm is sqrt(norm_sq[0]) * unscale.
fn clip_factor(unscale: f32) -> f32 {
    if (p.max_norm > 0.0) {
        return min(1.0, p.max_norm / (sqrt(norm_sq[0]) * unscale + 1e-6));
    }
    return 1.0;
}

// Neither infinite nor NaN, by the exponent bits (which no fast-math rewrite can drop).
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// One parameter's step with gradient factor `gain` (clipping, loss unscaling).
fn update(i: u32, gain: f32, weight_decay: f32) {
    var g = gain * grad[i] * p.grad_scale;
    var w = param[i];
    if (p.decoupled != 0u) {
        w -= p.lr * weight_decay * w;
    } else {
        // Adam's L2 penalty enters the gradient, and so the moments.
        g += weight_decay * w;
    }
    let m_new = p.beta1 * m[i] + (1.0 - p.beta1) * g;
    let v_new = p.beta2 * v[i] + (1.0 - p.beta2) * g * g;
    m[i] = m_new;
    v[i] = v_new;
    let m_hat = m_new / p.bias_correction1;
    let v_hat = v_new / p.bias_correction2;
    param[i] = w - p.lr * m_hat / (sqrt(v_hat) + p.eps);
}

@compute @workgroup_size(256)
fn step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    if (i >= p.n) {
        return;
    }
    update(i, clip_factor(1.0), p.weight_decay);
}

// p.n is the number of blocks here.
@compute @workgroup_size(256)
fn step_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.n) {
        return;
    }
    var unscale = 1.0;
    if (p.scaled != 0u) {
        if (!finite(norm_sq[0])) {
            return;
        }
        unscale = 1.0 / loss_scale[0];
    }
    let gain = clip_factor(unscale) * unscale;
    let block = blocks[g];
    let weight_decay = select(0.0, p.weight_decay, block.z != 0u);
    for (var i = block.x + lid; i < block.y; i += 256u) {
        update(i, gain, weight_decay);
    }
}
