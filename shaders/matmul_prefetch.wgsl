// The 128 x 128 matmul kernel with the loads of the next k-slice in flight while the current one is
// multiplied (matmul_tile128.wgsl, prepended, has the tiling), at TILE_K = 16: each thread holds its
// share of the next slice in 16 registers between the barriers (register double buffering; workgroup
// memory stays at 16 KiB).

var<workgroup> a_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(B) columns, k-major

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let s = staging(lid);
    var acc = Acc();

    // This thread's share of slice 0, then of each next slice.
    let ra = row0 + 4u * s.a_q;
    let cb = col0 + 4u * s.b_q;
    var a_next0 = load_a4(ra, s.a_k);
    var b_next0 = load_b4(s.b_k, cb);
    var a_next1 = load_a4(ra, 8u + s.a_k);
    var b_next1 = load_b4(8u + s.b_k, cb);
    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        a_tile[s.a_k * ROW_VEC4S + s.a_q] = a_next0;
        b_tile[s.b_k * ROW_VEC4S + s.b_q] = b_next0;
        a_tile[(8u + s.a_k) * ROW_VEC4S + s.a_q] = a_next1;
        b_tile[(8u + s.b_k) * ROW_VEC4S + s.b_q] = b_next1;
        workgroupBarrier();
        // Issued before the products so that their latency hides behind them; past k they read zeros.
        let kn = k0 + TILE_K;
        a_next0 = load_a4(ra, kn + s.a_k);
        b_next0 = load_b4(kn + s.b_k, cb);
        a_next1 = load_a4(ra, kn + 8u + s.a_k);
        b_next1 = load_b4(kn + 8u + s.b_k, cb);
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a0 = a_tile[kk * ROW_VEC4S + s.ty];
            let a1 = a_tile[kk * ROW_VEC4S + 16u + s.ty];
            let b0 = b_tile[kk * ROW_VEC4S + s.tx];
            let b1 = b_tile[kk * ROW_VEC4S + 16u + s.tx];
            mul_add(&acc, a0, a1, b0, b1);
        }
        // The next slice overwrites the tiles only after every thread has read this one.
        workgroupBarrier();
    }

    store_tile(acc, row0, col0, s);
}
