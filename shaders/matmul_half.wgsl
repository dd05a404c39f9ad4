// The 128 x 128 matmul kernel in half precision (matmul_tile128.wgsl, prepended, has the tiling): the
// staged operands are rounded to f16 and each slice's TILE_K products summed in f16 registers (two
// products per instruction where the GPU pairs them), then the slice sums added in f32. Values beyond
// f16's range become infinities, which the trainer's loss scaling detects. Needs the SHADER_F16 feature;
// `enable f16;` is prepended with the constants.

var<workgroup> a_tile: array<vec4<f16>, TILE_K * ROW_VEC4S>; // op(A) rows, k-major
var<workgroup> b_tile: array<vec4<f16>, TILE_K * ROW_VEC4S>; // op(B) columns, k-major

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
            a_tile[(k8 + s.a_k) * ROW_VEC4S + s.a_q] = vec4<f16>(av);
            b_tile[(k8 + s.b_k) * ROW_VEC4S + s.b_q] = vec4<f16>(bv);
        }
        workgroupBarrier();
        // This slice's sums in f16, added to the f32 totals below.
        var h000 = vec4<f16>(0.0h);
        var h001 = vec4<f16>(0.0h);
        var h010 = vec4<f16>(0.0h);
        var h011 = vec4<f16>(0.0h);
        var h020 = vec4<f16>(0.0h);
        var h021 = vec4<f16>(0.0h);
        var h030 = vec4<f16>(0.0h);
        var h031 = vec4<f16>(0.0h);
        var h100 = vec4<f16>(0.0h);
        var h101 = vec4<f16>(0.0h);
        var h110 = vec4<f16>(0.0h);
        var h111 = vec4<f16>(0.0h);
        var h120 = vec4<f16>(0.0h);
        var h121 = vec4<f16>(0.0h);
        var h130 = vec4<f16>(0.0h);
        var h131 = vec4<f16>(0.0h);
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a0 = a_tile[kk * ROW_VEC4S + s.ty];
            let a1 = a_tile[kk * ROW_VEC4S + 16u + s.ty];
            let b0 = b_tile[kk * ROW_VEC4S + s.tx];
            let b1 = b_tile[kk * ROW_VEC4S + 16u + s.tx];
            h000 = fma(vec4<f16>(a0.x), b0, h000);
            h001 = fma(vec4<f16>(a0.x), b1, h001);
            h010 = fma(vec4<f16>(a0.y), b0, h010);
            h011 = fma(vec4<f16>(a0.y), b1, h011);
            h020 = fma(vec4<f16>(a0.z), b0, h020);
            h021 = fma(vec4<f16>(a0.z), b1, h021);
            h030 = fma(vec4<f16>(a0.w), b0, h030);
            h031 = fma(vec4<f16>(a0.w), b1, h031);
            h100 = fma(vec4<f16>(a1.x), b0, h100);
            h101 = fma(vec4<f16>(a1.x), b1, h101);
            h110 = fma(vec4<f16>(a1.y), b0, h110);
            h111 = fma(vec4<f16>(a1.y), b1, h111);
            h120 = fma(vec4<f16>(a1.z), b0, h120);
            h121 = fma(vec4<f16>(a1.z), b1, h121);
            h130 = fma(vec4<f16>(a1.w), b0, h130);
            h131 = fma(vec4<f16>(a1.w), b1, h131);
        }
        acc.c000 += vec4<f32>(h000);
        acc.c001 += vec4<f32>(h001);
        acc.c010 += vec4<f32>(h010);
        acc.c011 += vec4<f32>(h011);
        acc.c020 += vec4<f32>(h020);
        acc.c021 += vec4<f32>(h021);
        acc.c030 += vec4<f32>(h030);
        acc.c031 += vec4<f32>(h031);
        acc.c100 += vec4<f32>(h100);
        acc.c101 += vec4<f32>(h101);
        acc.c110 += vec4<f32>(h110);
        acc.c111 += vec4<f32>(h111);
        acc.c120 += vec4<f32>(h120);
        acc.c121 += vec4<f32>(h121);
        acc.c130 += vec4<f32>(h130);
        acc.c131 += vec4<f32>(h131);
        // The next slice overwrites the tiles only after every thread has read this one.
        workgroupBarrier();
    }

    store_tile(acc, row0, col0, s);
}
