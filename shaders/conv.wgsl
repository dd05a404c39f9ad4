// Neighbourhood convolutions of the NCA and their backward passes (src/ops/conv.rs derives the gradients).
// causal_*: 1-D causal depthwise convolution over sequences; torus_*: 3x3 convolution on periodic grids,
// HWIO weights weight[(k * cin + ci) * cout + co] for neighbour k = 3 dy + dx.
// Element-wise kernels (forward, dx) run one invocation per output element, 256 per workgroup, workgroups
// linearised over x and y. Weight and bias gradients are deterministic two-stage sums: *_grad_partials sums
// blocks of ROWS_PER_BLOCK rows per gradient column into scratch, grad_total adds the blocks up in order.
// Gradient columns: the weight_len weight entries, then cout bias entries.

// WG, ROWS_PER_BLOCK, ACCUMULATE_DW and ACCUMULATE_DX are prepended from src/ops/conv.rs.

struct Params {
    rows: u32,
    seq_len: u32,
    grid: u32,
    cin: u32,
    cout: u32,
    width: u32,
    weight_len: u32,
    // Bit 0: add to the weight and bias gradients; bit 1 (causal only): add to dx.
    accumulate: u32,
}

// One binding list for every entry point: bias_or_dbias is the bias in the forward passes and its gradient
// in the backward ones; y_or_dy likewise.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> bias_or_dbias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y_or_dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> dweight: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;

fn linear_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// Cell `cell` shifted by (sy, sx) in {-1, 0, 1}^2 on its own periodic grid.
fn torus_shift(cell: u32, sy: i32, sx: i32) -> u32 {
    let g = p.grid;
    let area = g * g;
    let base = cell - cell % area;
    let local = cell % area;
    // Adding g before the shift keeps the unsigned arithmetic non-negative.
    let yy = (local / g + g + u32(sy + 1) - 1u) % g;
    let xx = (local % g + g + u32(sx + 1) - 1u) % g;
    return base + yy * g + xx;
}

// Neighbour k = 3 dy + dx of `cell`: (y + dy - 1, x + dx - 1) mod grid.
fn torus_neighbour(cell: u32, k: u32) -> u32 {
    return torus_shift(cell, i32(k / 3u) - 1, i32(k % 3u) - 1);
}

// y[t][c] = bias[c] + sum_{j < width, t - j >= 0} kernel[j][c] x[t - j][c], t the position in its sequence.
@compute @workgroup_size(256)
fn causal_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    let c_len = p.cin;
    if (i >= p.rows * c_len) {
        return;
    }
    let row = i / c_len;
    let c = i % c_len;
    let t = row % p.seq_len;
    var sum = bias_or_dbias[c];
    for (var j = 0u; j < p.width && j <= t; j++) {
        sum += weight[j * c_len + c] * x[(row - j) * c_len + c];
    }
    y_or_dy[i] = sum;
}

// dx[t][c] = sum_{j < width, t + j < seq_len} kernel[j][c] dy[t + j][c].
@compute @workgroup_size(256)
fn causal_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    let c_len = p.cin;
    if (i >= p.rows * c_len) {
        return;
    }
    let row = i / c_len;
    let c = i % c_len;
    let t = row % p.seq_len;
    var sum = 0.0;
    for (var j = 0u; j < p.width && t + j < p.seq_len; j++) {
        sum += weight[j * c_len + c] * y_or_dy[(row + j) * c_len + c];
    }
    if ((p.accumulate & ACCUMULATE_DX) != 0u) {
        dx[i] += sum;
    } else {
        dx[i] = sum;
    }
}

// scratch[block][q]: over the block's rows, dy[t][c] x[t - j][c] for q = j * channels + c (t - j inside the
// sequence), dy[t][c] for the bias column q = weight_len + c.
@compute @workgroup_size(256)
fn causal_grad_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * nwg.x;
    let columns = p.weight_len + p.cout;
    let tiles = (columns + WG - 1u) / WG;
    let block = group / tiles;
    let q = (group % tiles) * WG + lid;
    let first = block * ROWS_PER_BLOCK;
    if (first >= p.rows || q >= columns) {
        return;
    }
    let last = min(first + ROWS_PER_BLOCK, p.rows);
    let c_len = p.cin;
    var sum = 0.0;
    if (q < p.weight_len) {
        let j = q / c_len;
        let c = q % c_len;
        for (var row = first; row < last; row++) {
            if (row % p.seq_len >= j) {
                sum += y_or_dy[row * c_len + c] * x[(row - j) * c_len + c];
            }
        }
    } else {
        let c = q - p.weight_len;
        for (var row = first; row < last; row++) {
            sum += y_or_dy[row * c_len + c];
        }
    }
    scratch[block * columns + q] = sum;
}

// y[cell][co] = bias[co] + sum_k sum_ci weight[k][ci][co] x[nb_k(cell)][ci].
@compute @workgroup_size(256)
fn torus_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.rows * p.cout) {
        return;
    }
    let cell = i / p.cout;
    let co = i % p.cout;
    var sum = bias_or_dbias[co];
    for (var k = 0u; k < 9u; k++) {
        let nb = torus_neighbour(cell, k) * p.cin;
        for (var ci = 0u; ci < p.cin; ci++) {
            sum += weight[(k * p.cin + ci) * p.cout + co] * x[nb + ci];
        }
    }
    y_or_dy[i] = sum;
}

// dx[cell][ci] = sum_k sum_co weight[k][ci][co] dy[cell'][co] over the cells cell' whose neighbour k is
// `cell`: cell' = cell shifted by (1 - dy, 1 - dx).
@compute @workgroup_size(256)
fn torus_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_id(wid, nwg, lid);
    if (i >= p.rows * p.cin) {
        return;
    }
    let cell = i / p.cin;
    let ci = i % p.cin;
    var sum = 0.0;
    for (var k = 0u; k < 9u; k++) {
        let source = torus_shift(cell, 1 - i32(k / 3u), 1 - i32(k % 3u)) * p.cout;
        for (var co = 0u; co < p.cout; co++) {
            sum += weight[(k * p.cin + ci) * p.cout + co] * y_or_dy[source + co];
        }
    }
    dx[i] = sum;
}

// scratch[block][q]: over the block's cells, dy[cell][co] x[nb_k(cell)][ci] for q = (k * cin + ci) * cout + co,
// dy[cell][co] for the bias column q = weight_len + co.
@compute @workgroup_size(256)
fn torus_grad_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.x + wid.y * nwg.x;
    let columns = p.weight_len + p.cout;
    let tiles = (columns + WG - 1u) / WG;
    let block = group / tiles;
    let q = (group % tiles) * WG + lid;
    let first = block * ROWS_PER_BLOCK;
    if (first >= p.rows || q >= columns) {
        return;
    }
    let last = min(first + ROWS_PER_BLOCK, p.rows);
    var sum = 0.0;
    if (q < p.weight_len) {
        let co = q % p.cout;
        let ci = (q / p.cout) % p.cin;
        let k = q / (p.cout * p.cin);
        for (var cell = first; cell < last; cell++) {
            sum += y_or_dy[cell * p.cout + co] * x[torus_neighbour(cell, k) * p.cin + ci];
        }
    } else {
        let co = q - p.weight_len;
        for (var cell = first; cell < last; cell++) {
            sum += y_or_dy[cell * p.cout + co];
        }
    }
    scratch[block * columns + q] = sum;
}

// Each gradient column (=, or += when accumulating) its blocks' partial sums, added in block order.
@compute @workgroup_size(256)
fn grad_total(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let q = linear_id(wid, nwg, lid);
    let columns = p.weight_len + p.cout;
    if (q >= columns) {
        return;
    }
    let blocks = (p.rows + ROWS_PER_BLOCK - 1u) / ROWS_PER_BLOCK;
    var sum = 0.0;
    for (var block = 0u; block < blocks; block++) {
        sum += scratch[block * columns + q];
    }
    if (q < p.weight_len) {
        if ((p.accumulate & ACCUMULATE_DW) != 0u) {
            dweight[q] = dweight[q] + sum;
        } else {
            dweight[q] = sum;
        }
    } else {
        let c = q - p.weight_len;
        if ((p.accumulate & ACCUMULATE_DW) != 0u) {
            bias_or_dbias[c] = bias_or_dbias[c] + sum;
        } else {
            bias_or_dbias[c] = sum;
        }
    }
}
