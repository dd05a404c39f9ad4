// The 128 x 128 matmul kernel (matmul_tile128.wgsl, prepended, has the tiling): per step the workgroup
// stages a TILE_K-deep slice of k (8 or 16) of both operands, loading each 8 of k just before storing it.

var<workgroup> a_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(B) columns, k-major

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let s = staging(lid);
    var acc = Acc();

    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var k8 = 0u; k8 < TILE_K; k8 += 8u) {
            let r = row0 + 4u * s.a_q;
            let ka = k0 + k8 + s.a_k;
            let av = load_a4(r, ka);
            let cb = col0 + 4u * s.b_q;
            let kb = k0 + k8 + s.b_k;
            let bv = load_b4(kb, cb);
            a_tile[(k8 + s.a_k) * ROW_VEC4S + s.a_q] = av;
            b_tile[(k8 + s.b_k) * ROW_VEC4S + s.b_q] = bv;
        }
        workgroupBarrier();
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
