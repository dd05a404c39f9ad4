// RMSNorm: y = w * x * r with r = (mean_j x_j^2 + eps)^(-1/2) per row, and its backward (docs/gradients.md).
// forward and backward_dx: one workgroup of 256 per row (rows linearised over x and y), reduced by
// group_sum (group_reduce_*.wgsl, prepended). Each invocation owns the columns lid, lid + 256, ... of its row in
// both loops, so y may alias x and dx may alias dy (unless dx accumulates).
// forward_carry also copies x into `carry`, fusing the copy of the residual stream that the block's
// output projection then adds to. backward_dx adds to dx when ACCUMULATE_DX is set, fusing the
// residual's gradient sum.
// dw = sum over rows of dy * x * r, deterministic in two stages: backward_dw_partials sums blocks of
// ROWS_PER_BLOCK rows per column into scratch, backward_dw_total adds those blocks up in order.

// WG, ROWS_PER_BLOCK, ACCUMULATE_DW and ACCUMULATE_DX (bits of Params.flags) are prepended from
// src/ops/rmsnorm.rs.

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    flags: u32,
}

// One binding list for every entry point: y_or_dy is y in the forward pass and dy in the backward,
// dx_or_carry the forward's copy of x or the backward's dx.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> y_or_dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx_or_carry: array<f32>;
@group(0) @binding(6) var<storage, read_write> dw: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;

// The row's r, written to rstd (by invocation 0).
fn row_rstd(inv: Invocation, row: u32, base: u32) -> f32 {
    let lid = inv.lid;
    var squares = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        let v = x[base + j];
        squares += v * v;
    }
    let r = inverseSqrt(group_sum(inv, squares) / f32(p.dim) + p.eps);
    if (lid == 0u) {
        rstd[row] = r;
    }
    return r;
}

@compute @workgroup_size(256)
fn forward(inv: Invocation) {
    let row = inv.wid.x + inv.wid.y * inv.nwg.x;
    let lid = inv.lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let r = row_rstd(inv, row, base);
    for (var j = lid; j < p.dim; j += WG) {
        y_or_dy[base + j] = w[j] * x[base + j] * r;
    }
}

@compute @workgroup_size(256)
fn forward_carry(inv: Invocation) {
    let row = inv.wid.x + inv.wid.y * inv.nwg.x;
    let lid = inv.lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    let r = row_rstd(inv, row, base);
    for (var j = lid; j < p.dim; j += WG) {
        let v = x[base + j];
        y_or_dy[base + j] = w[j] * v * r;
        dx_or_carry[base + j] = v;
    }
}

// dx = r * (g - x * r^2 * mean_j(g_j x_j)) with g = dy * w.
@compute @workgroup_size(256)
fn backward_dx(inv: Invocation) {
    let row = inv.wid.x + inv.wid.y * inv.nwg.x;
    let lid = inv.lid;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.dim;
    var dot = 0.0;
    for (var j = lid; j < p.dim; j += WG) {
        dot += y_or_dy[base + j] * w[j] * x[base + j];
    }
    let r = rstd[row];
    let correction = r * r * group_sum(inv, dot) / f32(p.dim);
    let accumulate = (p.flags & ACCUMULATE_DX) != 0u;
    for (var j = lid; j < p.dim; j += WG) {
        let g = y_or_dy[base + j] * w[j];
        let grad = r * (g - x[base + j] * correction);
        if (accumulate) {
            dx_or_carry[base + j] += grad;
        } else {
            dx_or_carry[base + j] = grad;
        }
    }
}

// scratch[block, j] = sum over the block's rows of dy * x * r. Workgroups: column tiles of 256 x row blocks,
// linearised (tile fastest) over x and y.
@compute @workgroup_size(256)
fn backward_dw_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * nwg.x;
    let tiles = (p.dim + WG - 1u) / WG;
    let block = group / tiles;
    let j = (group % tiles) * WG + lid;
    let first = block * ROWS_PER_BLOCK;
    if (first >= p.rows || j >= p.dim) {
        return;
    }
    let last = min(first + ROWS_PER_BLOCK, p.rows);
    var sum = 0.0;
    for (var row = first; row < last; row++) {
        let i = row * p.dim + j;
        sum += y_or_dy[i] * x[i] * rstd[row];
    }
    scratch[block * p.dim + j] = sum;
}

// dw[j] (=, or += when accumulating) the blocks' partial sums, added in block order.
@compute @workgroup_size(256)
fn backward_dw_total(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let j = (wid.x + wid.y * nwg.x) * WG + lid;
    if (j >= p.dim) {
        return;
    }
    let blocks = (p.rows + ROWS_PER_BLOCK - 1u) / ROWS_PER_BLOCK;
    var sum = 0.0;
    for (var block = 0u; block < blocks; block++) {
        sum += scratch[block * p.dim + j];
    }
    if ((p.flags & ACCUMULATE_DW) != 0u) {
        dw[j] = dw[j] + sum;
    } else {
        dw[j] = sum;
    }
}
