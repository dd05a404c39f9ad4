// Matrix multiply C[m,n] = op(A) op(B) (+ bias[n] per row) (+ C), and the two-stage column sums that give
// bias gradients. A is stored [m,k] (or [k,m] when transposed), B [k,n] (or [n,k]); all row-major.
//
// Tiling: a workgroup of 16x16 threads owns a 64x64 tile of C. Per step it stages a 16-deep slice of k
// for its 64 rows of op(A) and 64 columns of op(B) in workgroup memory, laid out k-major so that each
// thread reads its 4 rows and 4 columns as one vec4 each; every thread keeps a 4x4 micro-tile of C in
// registers. The transposes are resolved while loading: consecutive threads read consecutive addresses
// of the stored layout, whichever it is, and every thread issues all its loads before its stores. Every global access is bounds-checked, so any m, n, k works.
// The grid is x over column tiles, y over row tiles, z over slices of k (split-K): slice z covers k in
// [z k_split, (z + 1) k_split) and, when there are several, writes its partial product to c[z][m][n]
// (no bias, no accumulation), which `split_k_sum` then adds up in a fixed order.
//
// The column sums share the bindings and Params (one binding layout per file keeps every backend happy):
// x [m, n] in `a`, the partial sums in `b`, the output [n] in `c`.

// Params and the bindings are in matmul_common.wgsl, prepended.

// TRANS_A, TRANS_B, TILE (64), TILE_K (16), THREADS (of the sum kernels) and SUM_ROWS are prepended per
// pipeline (src/ops/matmul/mod.rs).
// vec4s per k-row of a staged tile: 16 hold the 64 values, one more offsets successive k-rows so the
// transposing stores of a [rows, k] layout spread over memory banks instead of hitting one.
const ROW_VEC4S: u32 = 17u;

var<workgroup> a_tile: array<vec4<f32>, 272>; // [TILE_K][ROW_VEC4S]: op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f32>, 272>; // [TILE_K][ROW_VEC4S]: op(B) columns, k-major
// The end of this workgroup's slice of k.
var<private> k_end: u32;

// op(A)[row, kk], or 0 outside the matrix.
fn load_a(row: u32, kk: u32, trans_a: bool) -> f32 {
    if (row >= p.m || kk >= k_end) {
        return 0.0;
    }
    if (trans_a) {
        return a[kk * p.m + row];
    }
    return a[row * p.k + kk];
}

// op(B)[kk, col], or 0 outside the matrix.
fn load_b(kk: u32, col: u32, trans_b: bool) -> f32 {
    if (kk >= k_end || col >= p.n) {
        return 0.0;
    }
    if (trans_b) {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}

fn store_tile_a(kk: u32, row: u32, v: f32) {
    a_tile[kk * ROW_VEC4S + row / 4u][row % 4u] = v;
}

fn store_tile_b(kk: u32, col: u32, v: f32) {
    b_tile[kk * ROW_VEC4S + col / 4u][col % 4u] = v;
}

// TRANS_A and TRANS_B are constants prepended per variant (src/ops/matmul/mod.rs): each pipeline is compiled
// for one layout, with no run-time branches on it.
@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let trans_a = TRANS_A;
    let trans_b = TRANS_B;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // This thread's micro-tile: rows row0 + 4 ty .. +4, columns col0 + 4 tx .. +4.
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<vec4<f32>, 4>; // acc[i] = C[row i of the micro-tile, its 4 columns]
    let k_begin = wid.z * p.k_split;
    let k_stop = min(k_begin + p.k_split, p.k);
    k_end = k_stop;
    // Partial products of a split go to their own slice of the output (the launcher binds scratch).
    let out_offset = wid.z * p.m * p.n;

    for (var k0 = k_begin; k0 < k_stop; k0 += TILE_K) {
        // 64 x 16 values per operand, 4 per thread. The element order follows the stored layout:
        // along k when k is the contiguous dimension, along rows/columns otherwise.
        // Each thread loads four values of each operand before it stores any, so the eight global loads are
        // in flight together. Layouts contiguous along k give a thread four neighbouring k of one row
        // (four threads cover a row's 16); layouts contiguous along rows/columns give it four neighbouring
        // rows/columns of one k, staged as one whole vec4.
        let kk4 = lid / 16u;
        let q = lid % 16u;
        let line = lid / 4u;
        let kq = 4u * (lid % 4u);
        var av: vec4<f32>;
        var bv: vec4<f32>;
        if (trans_a) {
            let r = row0 + 4u * q;
            av = vec4<f32>(load_a(r, k0 + kk4, true), load_a(r + 1u, k0 + kk4, true), load_a(r + 2u, k0 + kk4, true), load_a(r + 3u, k0 + kk4, true));
        } else {
            let r = row0 + line;
            av = vec4<f32>(load_a(r, k0 + kq, false), load_a(r, k0 + kq + 1u, false), load_a(r, k0 + kq + 2u, false), load_a(r, k0 + kq + 3u, false));
        }
        if (trans_b) {
            let cc = col0 + line;
            bv = vec4<f32>(load_b(k0 + kq, cc, true), load_b(k0 + kq + 1u, cc, true), load_b(k0 + kq + 2u, cc, true), load_b(k0 + kq + 3u, cc, true));
        } else {
            let cc = col0 + 4u * q;
            bv = vec4<f32>(load_b(k0 + kk4, cc, false), load_b(k0 + kk4, cc + 1u, false), load_b(k0 + kk4, cc + 2u, false), load_b(k0 + kk4, cc + 3u, false));
        }
        if (trans_a) {
            a_tile[kk4 * ROW_VEC4S + q] = av;
        } else {
            for (var j = 0u; j < 4u; j++) {
                store_tile_a(kq + j, line, av[j]);
            }
        }
        if (trans_b) {
            for (var j = 0u; j < 4u; j++) {
                store_tile_b(kq + j, line, bv[j]);
            }
        } else {
            b_tile[kk4 * ROW_VEC4S + q] = bv;
        }
        workgroupBarrier();

        for (var kk = 0u; kk < TILE_K; kk++) {
            let av = a_tile[kk * ROW_VEC4S + ty];
            let bv = b_tile[kk * ROW_VEC4S + tx];
            acc[0] = fma(vec4<f32>(av.x), bv, acc[0]);
            acc[1] = fma(vec4<f32>(av.y), bv, acc[1]);
            acc[2] = fma(vec4<f32>(av.z), bv, acc[2]);
            acc[3] = fma(vec4<f32>(av.w), bv, acc[3]);
        }
        // The next slice overwrites the tiles only after every thread has read this one.
        workgroupBarrier();
    }

    // Epilogue: bias and accumulation, then the guarded store.
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + ty * 4u + i;
        if (row >= p.m) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + tx * 4u + j;
            if (col >= p.n) {
                break;
            }
            let index = out_offset + row * p.n + col;
            var v = acc[i][j];
            if (p.has_bias != 0u) {
                v += bias[col];
            }
            if (p.accumulate != 0u) {
                v += c[index];
            }
            c[index] = v;
        }
    }
}

// Split-K's second stage: c[i] = sum over slices z of a[z][i] (the partial products, in order), plus the
// bias and what c holds as asked; one thread per element of the m x n output.
@compute @workgroup_size(THREADS)
fn split_k_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * THREADS + lid;
    let len = p.m * p.n;
    if (i >= len) {
        return;
    }
    var v = 0.0;
    for (var z = 0u; z < p.splits; z++) {
        v += a[z * len + i];
    }
    if (p.has_bias != 0u) {
        v += bias[i % p.n];
    }
    if (p.accumulate != 0u) {
        v += c[i];
    }
    c[i] = v;
}

// Column sums c[col] = sum over rows of a[row, col], in a fixed order (deterministic, no atomics).
// Stage 1: workgroup (x, y) sums rows y*SUM_ROWS .. +SUM_ROWS of columns x*256 .. +256 into
// b[y * n + col], one thread per column walking down its rows (consecutive threads read consecutive
// addresses). Stage 2: one thread per column adds the row_blocks partials in order.

@compute @workgroup_size(THREADS)
fn column_sums_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * THREADS + lid;
    if (col >= p.n) {
        return;
    }
    let first = wid.y * SUM_ROWS;
    let last = min(first + SUM_ROWS, p.m);
    var sum = 0.0;
    for (var row = first; row < last; row++) {
        sum += a[row * p.n + col];
    }
    b[wid.y * p.n + col] = sum;
}

@compute @workgroup_size(THREADS)
fn column_sums_total(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = (wid.x + wid.y * nwg.x) * THREADS + lid;
    if (col >= p.n) {
        return;
    }
    var sum = 0.0;
    for (var block = 0u; block < p.row_blocks; block++) {
        sum += b[block * p.n + col];
    }
    if (p.accumulate != 0u) {
        sum += c[col];
    }
    c[col] = sum;
}
