// The 128 x 128 matmul kernel (matmul_tile128.wgsl, prepended, has the tiling): per step the workgroup
// stages a TILE_K-deep slice of k (8 or 16) of both operands, loading each 8 of k just before storing it.

var<workgroup> a_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f32>, TILE_K * ROW_VEC4S>; // op(B) columns, k-major

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

    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var k8 = 0u; k8 < TILE_K; k8 += 8u) {
            let r = row0 + 4u * a_q;
            let ka = k0 + k8 + a_k;
            let av = load_a4(r, ka);
            let cb = col0 + 4u * b_q;
            let kb = k0 + k8 + b_k;
            let bv = load_b4(kb, cb);
            a_tile[(k8 + a_k) * ROW_VEC4S + a_q] = av;
            b_tile[(k8 + b_k) * ROW_VEC4S + b_q] = bv;
        }
        workgroupBarrier();
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
