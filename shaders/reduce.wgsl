// Deterministic two-stage reductions (sum, sum of squares) of n f32 values into out[0], with no atomics.
// Stage 1: workgroup b reduces the contiguous block [b * 4096, (b + 1) * 4096): each thread adds 16 values
// (strided by 256, so loads coalesce), then group_sum (group_reduce_*.wgsl, prepended) over the 256
// threads writes partials[b].
// Stage 2: one workgroup reduces the partials the same way, each thread summing chunks of 32 before adding
// them to its total, so no running f32 sum grows over more than a few hundred terms.
// The order of every addition depends only on n: results are identical run to run.
// block_sums_of_squares_listed: stage 1 over the blocks a table lists (vec4<u32>: first element, end),
// writing partials[base + b]. Blocks lie inside one tensor each, so the partials, and the sum of them,
// do not depend on how tensors are laid out in buffers.

const WG: u32 = 256u;
const PER_THREAD: u32 = 16u;
// BLOCK (WG * PER_THREAD) is prepended from src/ops/reduce.rs.
const CHUNK: u32 = 32u;

struct Params {
    n: u32,
    partials: u32,
    base: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> blocks: array<vec4<u32>>;

fn block_partial(inv: Invocation, block: u32, squares: bool) {
    let lid = inv.lid;
    let start = block * BLOCK;
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = start + k * WG + lid;
        if (i < p.n) {
            let v = x[i];
            acc += select(v, v * v, squares);
        }
    }
    let total = group_sum(inv, acc);
    if (lid == 0u) {
        partials[block] = total;
    }
}

@compute @workgroup_size(256)
fn block_sums(inv: Invocation) {
    let block = inv.wid.x + inv.wid.y * inv.nwg.x;
    if (block >= p.partials) {
        return;
    }
    block_partial(inv, block, false);
}

@compute @workgroup_size(256)
fn block_sums_of_squares(inv: Invocation) {
    let block = inv.wid.x + inv.wid.y * inv.nwg.x;
    if (block >= p.partials) {
        return;
    }
    block_partial(inv, block, true);
}

@compute @workgroup_size(256)
fn block_sums_of_squares_listed(inv: Invocation) {
    let b = inv.wid.x + inv.wid.y * inv.nwg.x;
    if (b >= p.n) {
        return;
    }
    let block = blocks[b];
    var acc = 0.0;
    for (var k = 0u; k < PER_THREAD; k++) {
        let i = block.x + k * WG + inv.lid;
        if (i < block.y) {
            let v = x[i];
            acc += v * v;
        }
    }
    let total = group_sum(inv, acc);
    if (inv.lid == 0u) {
        partials[p.base + b] = total;
    }
}

@compute @workgroup_size(256)
fn finish(inv: Invocation) {
    let lid = inv.lid;
    var total = 0.0;
    for (var start = 0u; start < p.partials; start += WG * CHUNK) {
        var chunk = 0.0;
        for (var k = 0u; k < CHUNK; k++) {
            let i = start + k * WG + lid;
            if (i < p.partials) {
                chunk += partials[i];
            }
        }
        total += chunk;
    }
    let sum = group_sum(inv, total);
    if (lid == 0u) {
        out[0] = sum;
    }
}
