// What the 128 x 128 matmul kernels share (matmul_large.wgsl, matmul_prefetch.wgsl, matmul_half.wgsl,
// each prepended with this): C[m,n] = op(A) op(B) (+ bias[n] per row) (+ C), with the contract of
// shaders/matmul.wgsl and the Params and bindings of matmul_common.wgsl, on a tile four times the area.
//
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
// TRANS_A, TRANS_B, TILE (128) and TILE_K are constants prepended per pipeline (src/ops/matmul/mod.rs).
// Each kernel declares its staged tiles, a_tile and b_tile, and keeps only its staging and inner loop:
// the accumulators, their update and the epilogue are below.

// vec4s per k-row of a staged tile.
const ROW_VEC4S: u32 = 32u;

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

// The 8 x 8 micro-tile of C a thread accumulates: c{i}{j}{l} holds row 64 i + 4 ty + j, columns 64 l + 4 tx
// .. +4. Named fields rather than an array, so that no driver needs to index registers.
struct Acc {
    c000: vec4<f32>,
    c001: vec4<f32>,
    c010: vec4<f32>,
    c011: vec4<f32>,
    c020: vec4<f32>,
    c021: vec4<f32>,
    c030: vec4<f32>,
    c031: vec4<f32>,
    c100: vec4<f32>,
    c101: vec4<f32>,
    c110: vec4<f32>,
    c111: vec4<f32>,
    c120: vec4<f32>,
    c121: vec4<f32>,
    c130: vec4<f32>,
    c131: vec4<f32>,
}

// What thread lid of a workgroup works on: the micro-tile at (tx, ty), and which k (of each 8) and which
// four rows (columns) of each slice it stages, per layout.
struct Staging {
    tx: u32,
    ty: u32,
    a_k: u32,
    a_q: u32,
    b_k: u32,
    b_q: u32,
}

fn staging(lid: u32) -> Staging {
    return Staging(
        lid % 16u,
        lid / 16u,
        select(lid % 8u, lid / ROW_VEC4S, TRANS_A),
        select(lid / 8u, lid % ROW_VEC4S, TRANS_A),
        select(lid / ROW_VEC4S, lid % 8u, TRANS_B),
        select(lid % ROW_VEC4S, lid / 8u, TRANS_B),
    );
}

// acc += the outer products of one k: a0 and a1 hold the thread's rows (ty, 16 + ty as vec4s of four),
// b0 and b1 its columns.
fn mul_add(acc: ptr<function, Acc>, a0: vec4<f32>, a1: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>) {
    (*acc).c000 = fma(vec4<f32>(a0.x), b0, (*acc).c000);
    (*acc).c001 = fma(vec4<f32>(a0.x), b1, (*acc).c001);
    (*acc).c010 = fma(vec4<f32>(a0.y), b0, (*acc).c010);
    (*acc).c011 = fma(vec4<f32>(a0.y), b1, (*acc).c011);
    (*acc).c020 = fma(vec4<f32>(a0.z), b0, (*acc).c020);
    (*acc).c021 = fma(vec4<f32>(a0.z), b1, (*acc).c021);
    (*acc).c030 = fma(vec4<f32>(a0.w), b0, (*acc).c030);
    (*acc).c031 = fma(vec4<f32>(a0.w), b1, (*acc).c031);
    (*acc).c100 = fma(vec4<f32>(a1.x), b0, (*acc).c100);
    (*acc).c101 = fma(vec4<f32>(a1.x), b1, (*acc).c101);
    (*acc).c110 = fma(vec4<f32>(a1.y), b0, (*acc).c110);
    (*acc).c111 = fma(vec4<f32>(a1.y), b1, (*acc).c111);
    (*acc).c120 = fma(vec4<f32>(a1.z), b0, (*acc).c120);
    (*acc).c121 = fma(vec4<f32>(a1.z), b1, (*acc).c121);
    (*acc).c130 = fma(vec4<f32>(a1.w), b0, (*acc).c130);
    (*acc).c131 = fma(vec4<f32>(a1.w), b1, (*acc).c131);
}

// Writes the thread's micro-tile into the workgroup's tile of C at (row0, col0).
fn store_tile(acc: Acc, row0: u32, col0: u32, s: Staging) {
    store_row(row0 + 0u + 4u * s.ty + 0u, col0 + 4u * s.tx, acc.c000);
    store_row(row0 + 0u + 4u * s.ty + 0u, col0 + 64u + 4u * s.tx, acc.c001);
    store_row(row0 + 0u + 4u * s.ty + 1u, col0 + 4u * s.tx, acc.c010);
    store_row(row0 + 0u + 4u * s.ty + 1u, col0 + 64u + 4u * s.tx, acc.c011);
    store_row(row0 + 0u + 4u * s.ty + 2u, col0 + 4u * s.tx, acc.c020);
    store_row(row0 + 0u + 4u * s.ty + 2u, col0 + 64u + 4u * s.tx, acc.c021);
    store_row(row0 + 0u + 4u * s.ty + 3u, col0 + 4u * s.tx, acc.c030);
    store_row(row0 + 0u + 4u * s.ty + 3u, col0 + 64u + 4u * s.tx, acc.c031);
    store_row(row0 + 64u + 4u * s.ty + 0u, col0 + 4u * s.tx, acc.c100);
    store_row(row0 + 64u + 4u * s.ty + 0u, col0 + 64u + 4u * s.tx, acc.c101);
    store_row(row0 + 64u + 4u * s.ty + 1u, col0 + 4u * s.tx, acc.c110);
    store_row(row0 + 64u + 4u * s.ty + 1u, col0 + 64u + 4u * s.tx, acc.c111);
    store_row(row0 + 64u + 4u * s.ty + 2u, col0 + 4u * s.tx, acc.c120);
    store_row(row0 + 64u + 4u * s.ty + 2u, col0 + 64u + 4u * s.tx, acc.c121);
    store_row(row0 + 64u + 4u * s.ty + 3u, col0 + 4u * s.tx, acc.c130);
    store_row(row0 + 64u + 4u * s.ty + 3u, col0 + 64u + 4u * s.tx, acc.c131);
}
