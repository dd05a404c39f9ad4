// Softmax cross-entropy with an ignore mask, fused with its backward (docs/gradients.md).
// One workgroup per row (rows linearised over x and y): a strided pass finds the row's log-sum-exp with a
// running max and rescaled sum per thread, group_max and group_sum (group_reduce_*.wgsl, prepended)
// combine the 256 (max, sum) pairs, and a second strided pass overwrites the logits with
// (softmax - onehot) * scale. The thread that owns the target column reads
// the target logit just before overwriting it, so no extra barrier is needed for the loss.

const WG: u32 = 256u;
// Start of every running max: the lowest finite f32, so exp(start - z) is an exact 0 and never a NaN.
const LOWEST: f32 = -3.4028235e38;

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    // Whether loss_scale[0] multiplies the gradient too (half-precision training, loss_scale.wgsl).
    scaled: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> targets: array<u32>;
@group(0) @binding(3) var<storage, read_write> losses: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss_scale: array<f32>;

var<workgroup> row_target: u32;

@compute @workgroup_size(256)
fn forward_backward(inv: Invocation) {
    let row = inv.wid.x + inv.wid.y * inv.nwg.x;
    let lid = inv.lid;
    if (row >= p.rows) {
        return;
    }
    if (lid == 0u) {
        // Out-of-range targets count as ignored so that nothing indexes past the row.
        var t = targets[row];
        if (t >= p.vocab) {
            t = IGNORE;
        }
        row_target = t;
    }
    // A workgroup-uniform copy, so the ignored case may return before the barriers below.
    let target_col = workgroupUniformLoad(&row_target);
    let base = row * p.vocab;
    if (target_col == IGNORE) {
        for (var j = lid; j < p.vocab; j += WG) {
            logits[base + j] = 0.0;
        }
        if (lid == 0u) {
            losses[row] = 0.0;
        }
        return;
    }

    // Online max and sum of exp(z - max) over this thread's columns.
    var m = LOWEST;
    var s = 0.0;
    for (var j = lid; j < p.vocab; j += WG) {
        let z = logits[base + j];
        if (z > m) {
            s = s * exp(m - z) + 1.0;
            m = z;
        } else {
            s += exp(z - m);
        }
    }
    let row_max = group_max(inv, m);
    // exp(LOWEST - row_max) is 0 for threads that saw no column (s = 0 there).
    let lse = row_max + log(group_sum(inv, s * exp(m - row_max)));

    var scale = p.scale;
    if (p.scaled != 0u) {
        scale *= loss_scale[0];
    }
    for (var j = lid; j < p.vocab; j += WG) {
        let z = logits[base + j];
        var d = exp(z - lse);
        if (j == target_col) {
            losses[row] = lse - z;
            d -= 1.0;
        }
        logits[base + j] = d * scale;
    }
}
