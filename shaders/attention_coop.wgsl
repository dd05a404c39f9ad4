// Attention on cooperative matrices (tensor cores), after attention_common.wgsl and
// attention_coop_ops.wgsl: the outputs of attention.wgsl's kernels (O and the row log-sum-exp; dQ, dK
// and dV after its `backward_delta`; dropout from the same mask) with both products of every pass on
// 16 x 16 x 16 f16 -> f32 cooperative matrices. Operands are rounded to f16 as they are staged, as are
// the probabilities and their gradients before their products; every sum is f32. Needs the adapter's
// EXPERIMENTAL_COOPERATIVE_MATRIX (with that shape), SHADER_F16 and SUBGROUP features;
// src/ops/attention.rs prepends the directives, then COOP_PITCH (64 or 128: head_dim rounded up, so a
// build serves every head_dim up to it).
//
// A workgroup of 128 invocations owns 64 rows (queries; keys for dK and dV) of one (sequence, head), as
// four blocks of 16 rows, one block per subgroup. The block's rows of its operands stay in registers as
// COOP_PITCH / 16 fragments, its outputs as as many f32 accumulators. Columns (keys; queries for dK and
// dV) stream through workgroup memory in tiles of 32 rows. Per tile a subgroup forms its block's 16 x 32
// scores on cooperative matrices and stores them; the invocations turn them into probabilities (one
// invocation a row) and write those as f16 for the second product, which adds into the accumulators.
// Tiles above the causal diagonal are never visited.
//
// A cooperative accumulator cannot be scaled row by row, so the forward does not rescale as it goes: it
// sweeps the keys twice, first for each row's max and sum (its log-sum-exp) and then for
// O = sum_j exp(s_ij - lse_i) M_ij / (1 - p) V_j, whose weights are final when formed. That costs one
// Q K^T more, on the tensor cores.
//
// A device whose subgroups are wider than 32 has fewer than four per workgroup: they take the blocks in
// passes, each over all the columns (as matmul_coop.wgsl does). A subgroup without a block in a pass
// computes the last block again and stores nothing. Cooperative operations run in subgroup-uniform
// control flow: the only branches around them depend on constants, the subgroup's id and the number of
// subgroups. Barriers sit in workgroup-uniform control flow.
//
// Workgroup memory: 64 x COOP_PITCH f16 (16 KiB at 128), 64 x 32 f32 of scores (8 KiB) and two 64 x 32
// f16 tiles of weights (8 KiB): 32 KiB at COOP_PITCH 128, 24 KiB at 64.

const GROUP: u32 = 128u; // invocations per workgroup: four subgroups of 32
const ROWS: u32 = 64u; // rows per workgroup: four blocks of 16
const COLS: u32 = 32u; // rows of each streamed tile (columns of the scores)
const CHUNKS: u32 = COOP_PITCH / 16u; // fragments across the head dimension
const SECOND: u32 = COLS * COOP_PITCH; // where the second staged tile starts
const GRADS: u32 = ROWS * COLS; // where the gradients' weights start, after the probabilities'

// The workgroup's own 64 rows of one operand, then (once their fragments are loaded) two streamed tiles
// of 32 rows, from 0 and from SECOND; columns past head_dim hold 0.
var<workgroup> staged: array<f16, ROWS * COOP_PITCH>;
// Each block's 16 x 32 scores (or their gradients), row-major, the block's at block * 16 * COLS.
var<workgroup> scores: array<f32, ROWS * COLS>;
// The same blocks of weights for the second products: probabilities, then (from GRADS) score gradients.
var<workgroup> weights: array<f16, 2u * ROWS * COLS>;

// Stages rows t0 .. t0 + count of part `part` of qkv (Q, K or V) into `staged` from `at`, rounded to f16.
fn stage(part: u32, b: u32, h: u32, t0: u32, count: u32, at: u32, lid: u32) {
    for (var slot = lid; slot < count * COOP_PITCH; slot += GROUP) {
        staged[at + slot] = f16(load_part(part, b, t0 + slot / COOP_PITCH, h, slot % COOP_PITCH));
    }
}

// The same for d_o, in the backward (the forward binds no d_o).
fn stage_do(b: u32, h: u32, t0: u32, count: u32, at: u32, lid: u32) {
    for (var slot = lid; slot < count * COOP_PITCH; slot += GROUP) {
        staged[at + slot] = f16(load_do(b, t0 + slot / COOP_PITCH, h, slot % COOP_PITCH));
    }
}

// The block's 16 x 32 products with the tile staged at `at` (its rows as columns: A T^T, unscaled) into
// its scores, by the subgroup that owns the block (`mine`).
fn tile_products(a: ptr<function, array<FragA, CHUNKS>>, at: u32, block: u32, mine: bool) {
    for (var col = 0u; col < COLS; col += 16u) {
        var sums = Sums();
        for (var c = 0u; c < CHUNKS; c++) {
            sums = multiply_add((*a)[c], staged_bt(at + col * COOP_PITCH + c * 16u, COOP_PITCH), sums);
        }
        if (mine) {
            store_sums(sums, block * 16u * COLS + col, COLS);
        }
    }
}

// acc += (the block's weights from `w_at`, 16 x 32) (the tile staged at `at`, 32 x COOP_PITCH).
fn add_products(acc: ptr<function, array<Sums, CHUNKS>>, w_at: u32, at: u32, block: u32) {
    for (var c = 0u; c < CHUNKS; c++) {
        var sums = (*acc)[c];
        for (var col = 0u; col < COLS; col += 16u) {
            let w = weights_a(w_at + block * 16u * COLS + col, COLS);
            sums = multiply_add(w, staged_b(at + col * COOP_PITCH + c * 16u, COOP_PITCH), sums);
        }
        (*acc)[c] = sums;
    }
}

// Stores accumulators c and c + 1 of the block into its scores (16 x 32), for the element-wise
// write-out that follows; ends with the barrier after which every invocation may read them.
fn spill_pair(acc: ptr<function, array<Sums, CHUNKS>>, c: u32, block: u32, mine: bool) {
    if (mine) {
        store_sums((*acc)[c], block * 16u * COLS, COLS);
        store_sums((*acc)[c + 1u], block * 16u * COLS + 16u, COLS);
    }
    workgroupBarrier();
}

// Writes the accumulators of the pass's blocks, times `factor`, into part `part` (Q, K or V) of dqkv:
// the rows from r0 + 16 first of sequence b, head h. Every invocation calls it, at the same point.
fn write_grads(acc: ptr<function, array<Sums, CHUNKS>>, part: u32, factor: f32, b: u32, h: u32, r0: u32,
               first: u32, subgroups: u32, block: u32, mine: bool, lid: u32) {
    for (var c = 0u; c < CHUNKS; c += 2u) {
        spill_pair(acc, c, block, mine);
        for (var slot = 16u * first * COLS + lid; slot < pass_end(first, subgroups) * COLS; slot += GROUP) {
            let t = r0 + slot / COLS;
            let d = 16u * c + slot % COLS;
            if (in_range(t, d)) {
                dqkv[qkv_at(part, b, t, h, d)] = scores[slot] * factor;
            }
        }
        // The next pair (or pass) overwrites the scores.
        workgroupBarrier();
    }
}

// The blocks of the pass that starts at block `first`: rows from 16 first up to the returned end.
fn pass_end(first: u32, subgroups: u32) -> u32 {
    return min(first + subgroups, 4u) * 16u;
}

@compute @workgroup_size(128)
fn forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * ROWS;
    let last_key = min(q0 + ROWS, p.seq_len) - 1u;
    for (var first = 0u; first < 4u; first += subgroups) {
        let mine = first + subgroup < 4u;
        let block = min(first + subgroup, 3u);
        // Invocation lid owns row r (query i) in the element-wise steps, if r is in this pass.
        let r = 16u * first + lid;
        let owner = r < pass_end(first, subgroups);
        let i = q0 + r;
        stage(Q, b, h, q0, ROWS, 0u, lid);
        workgroupBarrier();
        var q: array<FragA, CHUNKS>;
        load_block(&q, block);
        // The key tiles overwrite the queries.
        workgroupBarrier();

        // First sweep: the row's max and sum, kept by its owner, then its log-sum-exp.
        var m_run = NEG_BIG;
        var l_run = 0.0;
        for (var k0 = 0u; k0 <= last_key; k0 += COLS) {
            stage(K, b, h, k0, COLS, 0u, lid);
            workgroupBarrier();
            tile_products(&q, 0u, block, mine);
            workgroupBarrier();
            if (owner) {
                var m_new = m_run;
                for (var col = 0u; col < COLS; col++) {
                    let s = scores[r * COLS + col] * p.scale;
                    m_new = select(m_new, max(m_new, s), causal(i, k0 + col));
                }
                var l_new = l_run * exp(m_run - m_new);
                for (var col = 0u; col < COLS; col++) {
                    let e = exp(scores[r * COLS + col] * p.scale - m_new);
                    l_new += select(0.0, e, causal(i, k0 + col));
                }
                m_run = m_new;
                l_run = l_new;
            }
            // The next tile's products overwrite the scores after the barrier that follows its staging.
        }
        let row_lse = m_run + log(l_run);

        // Second sweep: O = P' V with the final probabilities.
        var o_acc: array<Sums, CHUNKS>;
        for (var c = 0u; c < CHUNKS; c++) {
            o_acc[c] = Sums();
        }
        for (var k0 = 0u; k0 <= last_key; k0 += COLS) {
            stage(K, b, h, k0, COLS, 0u, lid);
            stage(V, b, h, k0, COLS, SECOND, lid);
            workgroupBarrier();
            tile_products(&q, 0u, block, mine);
            workgroupBarrier();
            if (owner) {
                for (var g = 0u; g < COLS; g += 4u) {
                    let drop = dropout_factors4(bh, i, k0 + g);
                    for (var c = 0u; c < 4u; c++) {
                        let col = g + c;
                        let prob = exp(scores[r * COLS + col] * p.scale - row_lse);
                        weights[r * COLS + col] = f16(select(0.0, prob, causal(i, k0 + col)) * drop[c]);
                    }
                }
            }
            workgroupBarrier();
            add_products(&o_acc, 0u, SECOND, block);
            // The next tile overwrites K and V.
            workgroupBarrier();
        }

        if (owner && i < p.seq_len) {
            lse[bh * p.seq_len + i] = row_lse;
        }
        for (var c = 0u; c < CHUNKS; c += 2u) {
            spill_pair(&o_acc, c, block, mine);
            for (var slot = 16u * first * COLS + lid; slot < pass_end(first, subgroups) * COLS; slot += GROUP) {
                let t = q0 + slot / COLS;
                let d = 16u * c + slot % COLS;
                if (in_range(t, d)) {
                    o[at(b, t, h, d)] = scores[slot];
                }
            }
            // The next pair (or pass) overwrites the scores.
            workgroupBarrier();
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Backward, after attention.wgsl's `backward_delta`. Both kernels form a tile's scores S, turn them into
// probabilities, form the tile's dP, and then, with dS = P (dP M / (1 - p) - delta), add dS (and P') times
// the staged tile into the accumulators.

// dV_j = sum_i P'_ij dO_i and dK_j = s sum_i dS_ij Q_i over the queries i >= j: the block's rows are
// keys, and tiles of queries stream (S^T = K Q^T, dP^T = V dO^T).
@compute @workgroup_size(128)
fn backward_dkdv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let k0 = wid.x * ROWS;
    for (var first = 0u; first < 4u; first += subgroups) {
        let mine = first + subgroup < 4u;
        let block = min(first + subgroup, 3u);
        let r = 16u * first + lid;
        let owner = r < pass_end(first, subgroups);
        let j = k0 + r;
        stage(K, b, h, k0, ROWS, 0u, lid);
        workgroupBarrier();
        var k: array<FragA, CHUNKS>;
        load_block(&k, block);
        workgroupBarrier();
        stage(V, b, h, k0, ROWS, 0u, lid);
        workgroupBarrier();
        var v: array<FragA, CHUNKS>;
        load_block(&v, block);
        workgroupBarrier();

        var dk_acc: array<Sums, CHUNKS>;
        var dv_acc: array<Sums, CHUNKS>;
        for (var c = 0u; c < CHUNKS; c++) {
            dk_acc[c] = Sums();
            dv_acc[c] = Sums();
        }
        // Query tiles from the block's first key (above the diagonal nothing is visited).
        for (var i0 = k0; i0 < p.seq_len; i0 += COLS) {
            stage(Q, b, h, i0, COLS, 0u, lid);
            stage_do(b, h, i0, COLS, SECOND, lid);
            workgroupBarrier();
            tile_products(&k, 0u, block, mine);
            workgroupBarrier();
            var prob: array<f32, COLS>;
            var drop: array<f32, COLS>;
            if (owner) {
                for (var col = 0u; col < COLS; col++) {
                    let i = i0 + col;
                    let stat = bh * p.seq_len + min(i, p.seq_len - 1u);
                    let e = exp(scores[r * COLS + col] * p.scale - lse[stat]);
                    prob[col] = select(0.0, e, causal(i, j));
                    // One key per row here, so one Philox call per pair, as `dropout_factor`.
                    drop[col] = dropout_factor(bh, i, j);
                    weights[r * COLS + col] = f16(prob[col] * drop[col]);
                }
            }
            workgroupBarrier();
            tile_products(&v, SECOND, block, mine);
            workgroupBarrier();
            if (owner) {
                for (var col = 0u; col < COLS; col++) {
                    let stat = bh * p.seq_len + min(i0 + col, p.seq_len - 1u);
                    let ds = prob[col] * (scores[r * COLS + col] * drop[col] - delta[stat]);
                    weights[GRADS + r * COLS + col] = f16(ds);
                }
            }
            workgroupBarrier();
            add_products(&dv_acc, 0u, SECOND, block);
            add_products(&dk_acc, GRADS, 0u, block);
            workgroupBarrier();
        }

        write_grads(&dk_acc, K, p.scale, b, h, k0, first, subgroups, block, mine, lid);
        write_grads(&dv_acc, V, 1.0, b, h, k0, first, subgroups, block, mine, lid);
    }
}

// dQ_i = s sum_j dS_ij K_j over the keys j <= i: the block's rows are queries, and tiles of keys (with
// their values) stream (S = Q K^T, dP = dO V^T).
@compute @workgroup_size(128)
fn backward_dq(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * ROWS;
    let last_key = min(q0 + ROWS, p.seq_len) - 1u;
    for (var first = 0u; first < 4u; first += subgroups) {
        let mine = first + subgroup < 4u;
        let block = min(first + subgroup, 3u);
        let r = 16u * first + lid;
        let owner = r < pass_end(first, subgroups);
        let i = q0 + r;
        let stat = bh * p.seq_len + min(i, p.seq_len - 1u);
        let row_lse = lse[stat];
        let row_delta = delta[stat];
        stage(Q, b, h, q0, ROWS, 0u, lid);
        workgroupBarrier();
        var q: array<FragA, CHUNKS>;
        load_block(&q, block);
        workgroupBarrier();
        stage_do(b, h, q0, ROWS, 0u, lid);
        workgroupBarrier();
        var d_out: array<FragA, CHUNKS>;
        load_block(&d_out, block);
        workgroupBarrier();

        var dq_acc: array<Sums, CHUNKS>;
        for (var c = 0u; c < CHUNKS; c++) {
            dq_acc[c] = Sums();
        }
        for (var k0 = 0u; k0 <= last_key; k0 += COLS) {
            stage(K, b, h, k0, COLS, 0u, lid);
            stage(V, b, h, k0, COLS, SECOND, lid);
            workgroupBarrier();
            tile_products(&q, 0u, block, mine);
            workgroupBarrier();
            var prob: array<f32, COLS>;
            var drop: array<f32, COLS>;
            if (owner) {
                for (var g = 0u; g < COLS; g += 4u) {
                    let factors = dropout_factors4(bh, i, k0 + g);
                    for (var c = 0u; c < 4u; c++) {
                        let col = g + c;
                        let e = exp(scores[r * COLS + col] * p.scale - row_lse);
                        prob[col] = select(0.0, e, causal(i, k0 + col));
                        drop[col] = factors[c];
                    }
                }
            }
            workgroupBarrier();
            tile_products(&d_out, SECOND, block, mine);
            workgroupBarrier();
            if (owner) {
                for (var col = 0u; col < COLS; col++) {
                    let ds = prob[col] * (scores[r * COLS + col] * drop[col] - row_delta);
                    weights[r * COLS + col] = f16(ds);
                }
            }
            workgroupBarrier();
            add_products(&dq_acc, 0u, 0u, block);
            workgroupBarrier();
        }

        write_grads(&dq_acc, Q, p.scale, b, h, q0, first, subgroups, block, mine, lid);
    }
}
