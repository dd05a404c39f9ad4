// The matmul kernel on cooperative matrices (tensor cores), after matmul_common.wgsl: C[m,n] = op(A) op(B)
// (+ bias[n] per row) (+ C), the contract of the other matmul kernels, with the operands rounded to f16
// as they are staged and every product summed in f32 accumulators (16 x 16 x 16, f16 -> f32). Needs the
// adapter's EXPERIMENTAL_COOPERATIVE_MATRIX (with that shape), SHADER_F16 and SUBGROUP features;
// src/ops/matmul/mod.rs prepends the directives, then TRANS_A, TRANS_B, TILE (64) and TILE_K (32).
//
// Tiling: a workgroup of 128 invocations owns a 64 x 64 tile of C, in four 32 x 32 quarters; one subgroup
// computes a quarter as 2 x 2 accumulators of 16 x 16. Per step the workgroup stages a TILE_K-deep slice
// of both operands in workgroup memory as f16, each in the order it is stored in (so that neighbouring
// invocations read neighbouring addresses whatever the layout), and the subgroups load their fragments
// from it row-major (coopLoadT) or column-major (coopLoad) to match. A device whose subgroups are wider
// than 32 has fewer than four per workgroup: they take the quarters in passes, each over all of k. At the
// end each subgroup stores its accumulators into workgroup memory, from where every invocation writes
// C with the bias, the accumulation and the bounds checks that edges need.
//
// Cooperative operations must run in subgroup-uniform control flow. Here they do: the only branches
// around them depend on constants, on the subgroup's id and on the number of subgroups.

// Invocations per workgroup: four subgroups of 32.
const GROUP: u32 = 128u;
// Side of a quarter of the tile, which one subgroup computes.
const QUARTER: u32 = 32u;

alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Sums = coop_mat16x16<f32, C>;

// The staged slices, each in the order its operand is stored in: op(A) rows x k ([row][k], or [k][row]
// when A is stored transposed), k x op(B) columns ([k][col], or [col][k] when B is).
var<workgroup> a_tile: array<f16, TILE * TILE_K>;
var<workgroup> b_tile: array<f16, TILE_K * TILE>;
// One 16 x 16 accumulator per quarter on its way out, row-major.
var<workgroup> c_out: array<f32, 4u * 256u>;

// Stages the slice of k from k0 for the tile at (row0, col0), rounded to f16.
fn stage(lid: u32, row0: u32, col0: u32, k0: u32) {
    for (var i = lid; i < TILE * TILE_K; i += GROUP) {
        if (TRANS_A) {
            a_tile[i] = f16(load_a(row0 + i % TILE, k0 + i / TILE));
        } else {
            a_tile[i] = f16(load_a(row0 + i / TILE_K, k0 + i % TILE_K));
        }
        if (TRANS_B) {
            b_tile[i] = f16(load_b(k0 + i % TILE_K, col0 + i / TILE_K));
        } else {
            b_tile[i] = f16(load_b(k0 + i / TILE, col0 + i % TILE));
        }
    }
}

// The 16 x 16 fragment of the staged op(A) at tile row r, slice column kk.
fn fragment_a(r: u32, kk: u32) -> FragA {
    if (TRANS_A) {
        return coopLoad<FragA>(&a_tile[kk * TILE + r], TILE);
    }
    return coopLoadT<FragA>(&a_tile[r * TILE_K + kk], TILE_K);
}

// The 16 x 16 fragment of the staged op(B) at slice row kk, tile column c.
fn fragment_b(kk: u32, c: u32) -> FragB {
    if (TRANS_B) {
        return coopLoad<FragB>(&b_tile[c * TILE_K + kk], TILE_K);
    }
    return coopLoadT<FragB>(&b_tile[kk * TILE + c], TILE);
}

// Writes C[row, col] = v (+ bias[col]) (+ C[row, col]) inside the matrix.
fn store_c(row: u32, col: u32, v: f32) {
    if (row >= p.m || col >= p.n) {
        return;
    }
    let index = row * p.n + col;
    var x = v;
    if (p.has_bias != 0u) {
        x += bias[col];
    }
    if (p.accumulate != 0u) {
        x += c[index];
    }
    c[index] = x;
}

// Writes accumulator `part` (0..4: row-major among the quarter's 2 x 2) of the quarters of this pass,
// those from `first` on, one per subgroup: `sums` is the calling subgroup's, for quarter `quarter` when
// `mine` (else it has none in this pass). Every invocation calls it, at the same point.
fn write_part(sums: Sums, quarter: u32, mine: bool, part: u32, first: u32, subgroups: u32, lid: u32,
              row0: u32, col0: u32) {
    if (mine) {
        coopStoreT(sums, &c_out[quarter * 256u], 16u);
    }
    workgroupBarrier();
    for (var e = lid; e < 4u * 256u; e += GROUP) {
        let q = e / 256u;
        if (q >= first && q < first + subgroups) {
            let i = (e % 256u) / 16u;
            let j = e % 16u;
            let row = row0 + QUARTER * (q / 2u) + 16u * (part / 2u) + i;
            let col = col0 + QUARTER * (q % 2u) + 16u * (part % 2u) + j;
            store_c(row, col, c_out[e]);
        }
    }
    // The next part overwrites c_out only after every invocation has read this one.
    workgroupBarrier();
}

@compute @workgroup_size(128)
fn gemm(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    // Passes over the quarters: one where the workgroup has four subgroups or more.
    for (var first = 0u; first < 4u; first += subgroups) {
        // A subgroup without a quarter in this pass computes the last one again and stores nothing.
        let mine = first + subgroup < 4u;
        let quarter = min(first + subgroup, 3u);
        let r = QUARTER * (quarter / 2u);
        let cc = QUARTER * (quarter % 2u);
        var s00 = Sums();
        var s01 = Sums();
        var s10 = Sums();
        var s11 = Sums();
        for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
            stage(lid, row0, col0, k0);
            workgroupBarrier();
            for (var kk = 0u; kk < TILE_K; kk += 16u) {
                let a0 = fragment_a(r, kk);
                let a1 = fragment_a(r + 16u, kk);
                let b0 = fragment_b(kk, cc);
                let b1 = fragment_b(kk, cc + 16u);
                s00 = coopMultiplyAdd(a0, b0, s00);
                s01 = coopMultiplyAdd(a0, b1, s01);
                s10 = coopMultiplyAdd(a1, b0, s10);
                s11 = coopMultiplyAdd(a1, b1, s11);
            }
            // The next slice overwrites the tiles only after every subgroup has read this one.
            workgroupBarrier();
        }
        write_part(s00, quarter, mine, 0u, first, subgroups, lid, row0, col0);
        write_part(s01, quarter, mine, 1u, first, subgroups, lid, row0, col0);
        write_part(s10, quarter, mine, 2u, first, subgroups, lid, row0, col0);
        write_part(s11, quarter, mine, 3u, first, subgroups, lid, row0, col0);
    }
}
