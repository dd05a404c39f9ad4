// Matrix multiply C[m,n] = op(A) op(B) (+ bias[n] per row) (+ C) for large products, with the loads of
// the next k-slice in flight while the current one is multiplied: the contract, Params, bindings and
// tiling of shaders/matmul_large.wgsl at TILE_K = 16, with each thread's share of the next slice held in
// 16 registers between the barriers (register double buffering; workgroup memory stays at 16 KiB).
//
// The tiling, as in matmul_large.wgsl:
// Tiling: a workgroup of 16x16 threads owns a 128x128 tile of C; each thread keeps an 8x8 micro-tile in
// 64 registers: rows 4 ty .. +4 and 64 + 4 ty .. +4, columns 4 tx .. +4 and 64 + 4 tx .. +4, so that its
// workgroup-memory reads are whole vec4s at consecutive addresses across the threads of a row (no bank
// conflicts). Per step the workgroup stages a TILE_K-deep slice of k (8 or 16) of both operands,
// k-major, as vec4s of four rows (or columns) at one k: each thread loads four values of each operand per
// 8 of k and stores them as one vec4, whatever the layout, so no store writes a single vec4 component.
// Loads follow the stored layout: along k when k is contiguous (8 threads cover 32 bytes of each of 4
// rows), along rows or columns otherwise (a thread reads 16 contiguous bytes). The inner product and
// epilogue are written out, so no driver needs to unroll loops over register arrays. Every global access
// is bounds-checked.
// TRANS_A, TRANS_B and TILE_K are constants prepended per pipeline (src/ops/matmul/mod.rs).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    accumulate: u32,
    row_blocks: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> bias: array<f32>;

const TILE: u32 = 128u;
// vec4s per k-row of a staged tile.
const ROW_VEC4S: u32 = 32u;

var<workgroup> a_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(B) columns, k-major

// op(A)[row, kk], or 0 outside the matrix.
fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (TRANS_A) {
        return a[kk * p.m + row];
    }
    return a[row * p.k + kk];
}

// op(B)[kk, col], or 0 outside the matrix.
fn load_b(kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if (TRANS_B) {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

// op(A)[row .. row + 4, kk] as one vec4.
fn load_a4(row: u32, kk: u32) -> vec4<f32> {
    return vec4<f32>(load_a(row, kk), load_a(row + 1u, kk), load_a(row + 2u, kk), load_a(row + 3u, kk));
}

// op(B)[kk, col .. col + 4] as one vec4.
fn load_b4(kk: u32, col: u32) -> vec4<f32> {
    return vec4<f32>(load_b(kk, col), load_b(kk, col + 1u), load_b(kk, col + 2u), load_b(kk, col + 3u));
}

// Writes C[row, col .. col + 4] (those inside the matrix), with bias and accumulation.
fn store_row(row: u32, col: u32, v: vec4<f32>) {
    if (row >= p.m) {
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = col + j;
        if (cj >= p.n) {
            return;
        }
        let index = row * p.n + cj;
        var x = v[j];
        if (p.has_bias != 0u) {
            x += bias[cj];
        }
        if (p.accumulate != 0u) {
            x += c[index];
        }
        c[index] = x;
    }
}

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tx = lid % 16u;
    let ty = lid / 16u;
    // Which k (of each 8) and which four rows (columns) of the slice this thread stages, per layout.
    let a_k = select(lid % 8u, lid / ROW_VEC4S, TRANS_A);
    let a_q = select(lid / 8u, lid % ROW_VEC4S, TRANS_A);
    let b_k = select(lid / ROW_VEC4S, lid % 8u, TRANS_B);
    let b_q = select(lid % ROW_VEC4S, lid / 8u, TRANS_B);
    var c000 = vec4<f32>(0.0);
    var c001 = vec4<f32>(0.0);
    var c010 = vec4<f32>(0.0);
    var c011 = vec4<f32>(0.0);
    var c020 = vec4<f32>(0.0);
    var c021 = vec4<f32>(0.0);
    var c030 = vec4<f32>(0.0);
    var c031 = vec4<f32>(0.0);
    var c100 = vec4<f32>(0.0);
    var c101 = vec4<f32>(0.0);
    var c110 = vec4<f32>(0.0);
    var c111 = vec4<f32>(0.0);
    var c120 = vec4<f32>(0.0);
    var c121 = vec4<f32>(0.0);
    var c130 = vec4<f32>(0.0);
    var c131 = vec4<f32>(0.0);

    // This thread's share of slice 0, then of each next slice.
    let ra = row0 + 4u * a_q;
    let cb = col0 + 4u * b_q;
    var a_next0 = load_a4(ra, a_k);
    var b_next0 = load_b4(b_k, cb);
    var a_next1 = load_a4(ra, 8u + a_k);
    var b_next1 = load_b4(8u + b_k, cb);
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        a_tile[a_k * ROW_VEC4S + a_q] = a_next0;
        b_tile[b_k * ROW_VEC4S + b_q] = b_next0;
        a_tile[(8u + a_k) * ROW_VEC4S + a_q] = a_next1;
        b_tile[(8u + b_k) * ROW_VEC4S + b_q] = b_next1;
        workgroupBarrier();
        // Issued before the products so that their latency hides behind them; past k they read zeros.
        let kn = k0 + TILE_K;
        a_next0 = load_a4(ra, kn + a_k);
        b_next0 = load_b4(kn + b_k, cb);
        a_next1 = load_a4(ra, kn + 8u + a_k);
        b_next1 = load_b4(kn + 8u + b_k, cb);
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a0 = a_tile[kk * ROW_VEC4S + ty];
            let a1 = a_tile[kk * ROW_VEC4S + 16u + ty];
            let b0 = b_tile[kk * ROW_VEC4S + tx];
            let b1 = b_tile[kk * ROW_VEC4S + 16u + tx];
            c000 = fma(vec4<f32>(a0.x), b0, c000);
            c001 = fma(vec4<f32>(a0.x), b1, c001);
            c010 = fma(vec4<f32>(a0.y), b0, c010);
            c011 = fma(vec4<f32>(a0.y), b1, c011);
            c020 = fma(vec4<f32>(a0.z), b0, c020);
            c021 = fma(vec4<f32>(a0.z), b1, c021);
            c030 = fma(vec4<f32>(a0.w), b0, c030);
            c031 = fma(vec4<f32>(a0.w), b1, c031);
            c100 = fma(vec4<f32>(a1.x), b0, c100);
            c101 = fma(vec4<f32>(a1.x), b1, c101);
            c110 = fma(vec4<f32>(a1.y), b0, c110);
            c111 = fma(vec4<f32>(a1.y), b1, c111);
            c120 = fma(vec4<f32>(a1.z), b0, c120);
            c121 = fma(vec4<f32>(a1.z), b1, c121);
            c130 = fma(vec4<f32>(a1.w), b0, c130);
            c131 = fma(vec4<f32>(a1.w), b1, c131);
        }
        // The next slice overwrites the tiles only after every thread has read this one.
        workgroupBarrier();
    }

    store_row(row0 + 0u + 4u * ty + 0u, col0 + 4u * tx, c000);
    store_row(row0 + 0u + 4u * ty + 0u, col0 + 64u + 4u * tx, c001);
    store_row(row0 + 0u + 4u * ty + 1u, col0 + 4u * tx, c010);
    store_row(row0 + 0u + 4u * ty + 1u, col0 + 64u + 4u * tx, c011);
    store_row(row0 + 0u + 4u * ty + 2u, col0 + 4u * tx, c020);
    store_row(row0 + 0u + 4u * ty + 2u, col0 + 64u + 4u * tx, c021);
    store_row(row0 + 0u + 4u * ty + 3u, col0 + 4u * tx, c030);
    store_row(row0 + 0u + 4u * ty + 3u, col0 + 64u + 4u * tx, c031);
    store_row(row0 + 64u + 4u * ty + 0u, col0 + 4u * tx, c100);
    store_row(row0 + 64u + 4u * ty + 0u, col0 + 64u + 4u * tx, c101);
    store_row(row0 + 64u + 4u * ty + 1u, col0 + 4u * tx, c110);
    store_row(row0 + 64u + 4u * ty + 1u, col0 + 64u + 4u * tx, c111);
    store_row(row0 + 64u + 4u * ty + 2u, col0 + 4u * tx, c120);
    store_row(row0 + 64u + 4u * ty + 2u, col0 + 64u + 4u * tx, c121);
    store_row(row0 + 64u + 4u * ty + 3u, col0 + 4u * tx, c130);
    store_row(row0 + 64u + 4u * ty + 3u, col0 + 64u + 4u * tx, c131);
}
