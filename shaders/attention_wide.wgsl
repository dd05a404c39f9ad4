// Attention forward on wider blocks (after attention_common.wgsl), with the outputs of attention.wgsl's
// `forward`: 64 queries per workgroup against blocks of 32 keys.
//
// Invocation lid owns query rows q0 + 2 (lid / 8) + {0, 1}. While scoring it owns keys k0 + 4 (lid % 8)
// + {0..3}: 8 scores, each q . k accumulated over 16-wide chunks of head_dim staged in workgroup memory.
// While accumulating it owns output dimensions 32 c + 4 (lid % 8) + {0..3}. Row maxima and sums pass
// through workgroup memory across the 8 invocations of a row, and a block's probabilities pass to the
// P V product through workgroup memory, [key][query]. Every invocation does 8 multiply-adds per 6
// workgroup-memory reads (the 16 x 16 kernels: 1 per 2), with fewer barriers per key.
//
// One array holds all of it, its regions reused phase by phase (16 KiB, the portable limit):
//   [0, 1024)     Q chunk [16][64]; then row maxima [64][8] and sums [64][8]; then a V chunk [32][32]
//   [1024, 1536)  K chunk [16][32]
//   [2048, 4096)  P' [32][64]
const WIDE_D: u32 = 16u; // head dimensions per scoring chunk
const WIDE_V: u32 = 32u; // head dimensions per accumulation chunk
const WIDE_K_AT: u32 = 1024u;
const WIDE_SUM_AT: u32 = 512u;
const WIDE_P_AT: u32 = 2048u;
const WIDE_MAX_V_CHUNKS: u32 = 4u; // 128 / WIDE_V

var<workgroup> wide: array<f32, 4096>;

@compute @workgroup_size(THREADS)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * WIDE_Q;
    let pair = lid / 8u; // rows 2 pair + {0, 1} of the block
    let lane = lid % 8u; // keys 4 lane + {0..3}; dimensions 32 c + 4 lane + {0..3}
    let rows = vec2<u32>(q0 + 2u * pair, q0 + 2u * pair + 1u);

    var m_run = vec2<f32>(NEG_BIG);
    var l_run = vec2<f32>(0.0);
    // acc[c] = (row 0, dims 32 c + 4 lane ..), acc[4 + c] = (row 1, ...).
    var acc: array<vec4<f32>, 8>;

    // Key blocks up to the one holding the block's last query.
    let last_key = min(q0 + WIDE_Q, p.seq_len) - 1u;
    for (var k0 = 0u; k0 <= last_key; k0 += WIDE_K) {
        // Scores of rows x keys, accumulated over chunks of head_dim.
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        for (var d0 = 0u; d0 < p.head_dim; d0 += WIDE_D) {
            for (var slot = lid; slot < WIDE_Q * WIDE_D; slot += THREADS) {
                let r = slot / WIDE_D;
                let d = slot % WIDE_D;
                wide[d * WIDE_Q + r] = load_q(b, q0 + r, h, d0 + d);
            }
            for (var slot = lid; slot < WIDE_K * WIDE_D; slot += THREADS) {
                let r = slot / WIDE_D;
                let d = slot % WIDE_D;
                wide[WIDE_K_AT + d * WIDE_K + r] = load_k(b, k0 + r, h, d0 + d);
            }
            workgroupBarrier();
            for (var d = 0u; d < WIDE_D; d++) {
                let a0 = wide[d * WIDE_Q + 2u * pair];
                let a1 = wide[d * WIDE_Q + 2u * pair + 1u];
                let at = WIDE_K_AT + d * WIDE_K + 4u * lane;
                let kv = vec4<f32>(wide[at], wide[at + 1u], wide[at + 2u], wide[at + 3u]);
                s0 = fma(vec4<f32>(a0), kv, s0);
                s1 = fma(vec4<f32>(a1), kv, s1);
            }
            workgroupBarrier();
        }
        var live0: vec4<bool>;
        var live1: vec4<bool>;
        for (var j = 0u; j < 4u; j++) {
            let key = k0 + 4u * lane + j;
            live0[j] = causal(rows.x, key);
            live1[j] = causal(rows.y, key);
        }
        s0 = select(vec4<f32>(NEG_BIG), s0 * p.scale, live0);
        s1 = select(vec4<f32>(NEG_BIG), s1 * p.scale, live1);

        // Row maxima across the 8 invocations of each row.
        let row0 = 2u * pair;
        wide[row0 * 8u + lane] = max(max(s0.x, s0.y), max(s0.z, s0.w));
        wide[(row0 + 1u) * 8u + lane] = max(max(s1.x, s1.y), max(s1.z, s1.w));
        workgroupBarrier();
        var m_block = vec2<f32>(NEG_BIG);
        for (var c = 0u; c < 8u; c++) {
            m_block = max(m_block, vec2<f32>(wide[row0 * 8u + c], wide[(row0 + 1u) * 8u + c]));
        }
        let m_new = max(m_run, m_block);
        let e0 = select(vec4<f32>(0.0), exp(s0 - vec4<f32>(m_new.x)), live0);
        let e1 = select(vec4<f32>(0.0), exp(s1 - vec4<f32>(m_new.y)), live1);
        wide[WIDE_SUM_AT + row0 * 8u + lane] = e0.x + e0.y + e0.z + e0.w;
        wide[WIDE_SUM_AT + (row0 + 1u) * 8u + lane] = e1.x + e1.y + e1.z + e1.w;
        // P' = P * dropout, [key][query], for the P V product.
        for (var j = 0u; j < 4u; j++) {
            let key = k0 + 4u * lane + j;
            let at = WIDE_P_AT + (4u * lane + j) * WIDE_Q + row0;
            wide[at] = e0[j] * dropout_factor(bh, rows.x, key);
            wide[at + 1u] = e1[j] * dropout_factor(bh, rows.y, key);
        }
        workgroupBarrier();
        var l_block = vec2<f32>(0.0);
        for (var c = 0u; c < 8u; c++) {
            l_block += vec2<f32>(wide[WIDE_SUM_AT + row0 * 8u + c], wide[WIDE_SUM_AT + (row0 + 1u) * 8u + c]);
        }
        let rescale = exp(m_run - m_new);
        l_run = l_run * rescale + l_block;
        m_run = m_new;
        for (var c = 0u; c < WIDE_MAX_V_CHUNKS; c++) {
            acc[c] *= rescale.x;
            acc[4u + c] *= rescale.y;
        }
        // The sums are read before the V chunks overwrite them.
        workgroupBarrier();

        for (var c = 0u; c < WIDE_MAX_V_CHUNKS; c++) {
            let d0 = c * WIDE_V;
            if (d0 >= p.head_dim) {
                break;
            }
            for (var slot = lid; slot < WIDE_K * WIDE_V; slot += THREADS) {
                let r = slot / WIDE_V;
                let d = slot % WIDE_V;
                wide[r * WIDE_V + d] = load_v(b, k0 + r, h, d0 + d);
            }
            workgroupBarrier();
            var o0 = vec4<f32>(0.0);
            var o1 = vec4<f32>(0.0);
            for (var key = 0u; key < WIDE_K; key++) {
                let pa = WIDE_P_AT + key * WIDE_Q + row0;
                let at = key * WIDE_V + 4u * lane;
                let vv = vec4<f32>(wide[at], wide[at + 1u], wide[at + 2u], wide[at + 3u]);
                o0 = fma(vec4<f32>(wide[pa]), vv, o0);
                o1 = fma(vec4<f32>(wide[pa + 1u]), vv, o1);
            }
            acc[c] += o0;
            acc[4u + c] += o1;
            workgroupBarrier();
        }
    }

    for (var r = 0u; r < 2u; r++) {
        let i = rows[r];
        if (i >= p.seq_len) {
            continue;
        }
        for (var c = 0u; c < WIDE_MAX_V_CHUNKS; c++) {
            let out = acc[4u * r + c] / l_run[r];
            for (var j = 0u; j < 4u; j++) {
                let d = c * WIDE_V + 4u * lane + j;
                if (d < p.head_dim) {
                    o[at(b, i, h, d)] = out[j];
                }
            }
        }
        if (lane == 0u) {
            lse[bh * p.seq_len + i] = m_run[r] + log(l_run[r]);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Backward on wider blocks, after attention.wgsl's `backward_delta`: the same outputs as its
// `backward_dkdv` and `backward_dq`. A workgroup owns 64 rows (queries for dQ, keys for dK and dV) and
// walks blocks of 32 columns (keys, or queries). Invocation lid owns rows 2 (lid / 8) + {0, 1} and
// columns 4 (lid % 8) + {0..3} while scoring, and the same rows with dimensions 32 c + 4 (lid % 8) +
// {0..3} while accumulating. Regions of `wide` while scoring: row-side chunks [16][64] at 0 and 1024,
// column-side chunks [16][32] at 2048 and 2560; afterwards a column-major block [32][64] of per-pair
// values at 2048 and a chunk [32][32] of the column side's rows at 0.

// x = a_r . c_col and y = b_r . d_col for this invocation's 2 rows x 4 columns, over all of head_dim.
// With rows as queries: a = q, b = dO, c = k, d = v; as keys: a = k, b = v, c = q, d = dO.
// Ends with a barrier, so the caller may reuse `wide`.
struct WideDots {
    x0: vec4<f32>,
    x1: vec4<f32>,
    y0: vec4<f32>,
    y1: vec4<f32>,
}

fn wide_dots(b: u32, h: u32, r0: u32, c0: u32, lid: u32, rows_are_queries: bool) -> WideDots {
    let pair = lid / 8u;
    let lane = lid % 8u;
    var dots = WideDots(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var d0 = 0u; d0 < p.head_dim; d0 += WIDE_D) {
        for (var slot = lid; slot < WIDE_Q * WIDE_D; slot += THREADS) {
            let r = slot / WIDE_D;
            let d = slot % WIDE_D;
            let t = r0 + r;
            if (rows_are_queries) {
                wide[d * WIDE_Q + r] = load_q(b, t, h, d0 + d);
                wide[1024u + d * WIDE_Q + r] = load_do(b, t, h, d0 + d);
            } else {
                wide[d * WIDE_Q + r] = load_k(b, t, h, d0 + d);
                wide[1024u + d * WIDE_Q + r] = load_v(b, t, h, d0 + d);
            }
        }
        for (var slot = lid; slot < WIDE_K * WIDE_D; slot += THREADS) {
            let r = slot / WIDE_D;
            let d = slot % WIDE_D;
            let t = c0 + r;
            if (rows_are_queries) {
                wide[2048u + d * WIDE_K + r] = load_k(b, t, h, d0 + d);
                wide[2560u + d * WIDE_K + r] = load_v(b, t, h, d0 + d);
            } else {
                wide[2048u + d * WIDE_K + r] = load_q(b, t, h, d0 + d);
                wide[2560u + d * WIDE_K + r] = load_do(b, t, h, d0 + d);
            }
        }
        workgroupBarrier();
        for (var d = 0u; d < WIDE_D; d++) {
            let a0 = wide[d * WIDE_Q + 2u * pair];
            let a1 = wide[d * WIDE_Q + 2u * pair + 1u];
            let b0 = wide[1024u + d * WIDE_Q + 2u * pair];
            let b1 = wide[1024u + d * WIDE_Q + 2u * pair + 1u];
            let ca = 2048u + d * WIDE_K + 4u * lane;
            let cv = vec4<f32>(wide[ca], wide[ca + 1u], wide[ca + 2u], wide[ca + 3u]);
            let da = 2560u + d * WIDE_K + 4u * lane;
            let dv4 = vec4<f32>(wide[da], wide[da + 1u], wide[da + 2u], wide[da + 3u]);
            dots.x0 = fma(vec4<f32>(a0), cv, dots.x0);
            dots.x1 = fma(vec4<f32>(a1), cv, dots.x1);
            dots.y0 = fma(vec4<f32>(b0), dv4, dots.y0);
            dots.y1 = fma(vec4<f32>(b1), dv4, dots.y1);
        }
        workgroupBarrier();
    }
    return dots;
}

// acc[c] (row 2 pair) and acc[4 + c] (row 2 pair + 1) += sum over the 32 columns of
// wide[2048 + col * 64 + row] * (row `col` of the column side)[32 c + 4 lane ..], the column side's rows
// being queries (dO or Q) or keys (K). Stages its chunks at 0; leaves `wide` free for the caller.
fn wide_accumulate(acc: ptr<function, array<vec4<f32>, 8>>, b: u32, h: u32, c0: u32, lid: u32, source: u32) {
    let pair = lid / 8u;
    let lane = lid % 8u;
    for (var c = 0u; c < WIDE_MAX_V_CHUNKS; c++) {
        let d0 = c * WIDE_V;
        if (d0 >= p.head_dim) {
            break;
        }
        for (var slot = lid; slot < WIDE_K * WIDE_V; slot += THREADS) {
            let r = slot / WIDE_V;
            let d = slot % WIDE_V;
            var x: f32;
            switch source {
                case 0u: { x = load_k(b, c0 + r, h, d0 + d); }
                case 1u: { x = load_do(b, c0 + r, h, d0 + d); }
                default: { x = load_q(b, c0 + r, h, d0 + d); }
            }
            wide[r * WIDE_V + d] = x;
        }
        workgroupBarrier();
        var s0 = vec4<f32>(0.0);
        var s1 = vec4<f32>(0.0);
        for (var col = 0u; col < WIDE_K; col++) {
            let pa = WIDE_P_AT + col * WIDE_Q + 2u * pair;
            let at = col * WIDE_V + 4u * lane;
            let vv = vec4<f32>(wide[at], wide[at + 1u], wide[at + 2u], wide[at + 3u]);
            s0 = fma(vec4<f32>(wide[pa]), vv, s0);
            s1 = fma(vec4<f32>(wide[pa + 1u]), vv, s1);
        }
        (*acc)[c] += s0;
        (*acc)[4u + c] += s1;
        workgroupBarrier();
    }
}

// Writes rows `rows` of part `grad` (Q, K or V) of dqkv from acc, times `factor`.
fn wide_store(acc: array<vec4<f32>, 8>, b: u32, h: u32, rows: vec2<u32>, lane: u32, factor: f32, grad: u32) {
    for (var r = 0u; r < 2u; r++) {
        if (rows[r] >= p.seq_len) {
            continue;
        }
        for (var c = 0u; c < WIDE_MAX_V_CHUNKS; c++) {
            for (var j = 0u; j < 4u; j++) {
                let d = c * WIDE_V + 4u * lane + j;
                if (d >= p.head_dim) {
                    continue;
                }
                dqkv[qkv_at(grad, b, rows[r], h, d)] = acc[4u * r + c][j] * factor;
            }
        }
    }
}

// dQ_i = s sum_j dS_ij K_j, with dS = P (dP' * drop - delta_i), P = exp(s q.k - LSE_i).
@compute @workgroup_size(THREADS)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * WIDE_Q;
    let pair = lid / 8u;
    let lane = lid % 8u;
    let rows = vec2<u32>(q0 + 2u * pair, q0 + 2u * pair + 1u);
    let last = p.seq_len - 1u;
    let stat = vec2<u32>(bh * p.seq_len + min(rows.x, last), bh * p.seq_len + min(rows.y, last));
    let row_lse = vec2<f32>(lse[stat.x], lse[stat.y]);
    let row_delta = vec2<f32>(delta[stat.x], delta[stat.y]);
    var acc: array<vec4<f32>, 8>;

    let last_key = min(q0 + WIDE_Q, p.seq_len) - 1u;
    for (var k0 = 0u; k0 <= last_key; k0 += WIDE_K) {
        let dots = wide_dots(b, h, q0, k0, lid, true);
        for (var j = 0u; j < 4u; j++) {
            let key = k0 + 4u * lane + j;
            let at = WIDE_P_AT + (4u * lane + j) * WIDE_Q + 2u * pair;
            let p0 = select(0.0, exp(dots.x0[j] * p.scale - row_lse.x), causal(rows.x, key));
            let p1 = select(0.0, exp(dots.x1[j] * p.scale - row_lse.y), causal(rows.y, key));
            wide[at] = p0 * (dots.y0[j] * dropout_factor(bh, rows.x, key) - row_delta.x);
            wide[at + 1u] = p1 * (dots.y1[j] * dropout_factor(bh, rows.y, key) - row_delta.y);
        }
        workgroupBarrier();
        wide_accumulate(&acc, b, h, k0, lid, 0u);
    }
    wide_store(acc, b, h, rows, lane, p.scale, Q);
}

// dV_j = sum_i P'_ij dO_i and dK_j = s sum_i dS_ij Q_i over the queries i >= j.
@compute @workgroup_size(THREADS)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let k0 = wid.x * WIDE_Q;
    let pair = lid / 8u;
    let lane = lid % 8u;
    let keys = vec2<u32>(k0 + 2u * pair, k0 + 2u * pair + 1u);
    var dk_acc: array<vec4<f32>, 8>;
    var dv_acc: array<vec4<f32>, 8>;

    for (var i0 = k0; i0 < p.seq_len; i0 += WIDE_K) {
        let dots = wide_dots(b, h, k0, i0, lid, false);
        var p0: vec4<f32>;
        var p1: vec4<f32>;
        var ds0: vec4<f32>;
        var ds1: vec4<f32>;
        for (var j = 0u; j < 4u; j++) {
            let i = i0 + 4u * lane + j;
            let stat = bh * p.seq_len + min(i, p.seq_len - 1u);
            let row_lse = lse[stat];
            let row_delta = delta[stat];
            let e0 = select(0.0, exp(dots.x0[j] * p.scale - row_lse), causal(i, keys.x));
            let e1 = select(0.0, exp(dots.x1[j] * p.scale - row_lse), causal(i, keys.y));
            let drop0 = dropout_factor(bh, i, keys.x);
            let drop1 = dropout_factor(bh, i, keys.y);
            p0[j] = e0 * drop0;
            p1[j] = e1 * drop1;
            ds0[j] = e0 * (dots.y0[j] * drop0 - row_delta);
            ds1[j] = e1 * (dots.y1[j] * drop1 - row_delta);
        }
        // dV from P', [query][key].
        for (var j = 0u; j < 4u; j++) {
            let at = WIDE_P_AT + (4u * lane + j) * WIDE_Q + 2u * pair;
            wide[at] = p0[j];
            wide[at + 1u] = p1[j];
        }
        workgroupBarrier();
        wide_accumulate(&dv_acc, b, h, i0, lid, 1u);
        // dK from dS, in the same place once every invocation is done with P'.
        for (var j = 0u; j < 4u; j++) {
            let at = WIDE_P_AT + (4u * lane + j) * WIDE_Q + 2u * pair;
            wide[at] = ds0[j];
            wide[at + 1u] = ds1[j];
        }
        workgroupBarrier();
        wide_accumulate(&dk_acc, b, h, i0, lid, 2u);
    }
    wide_store(dk_acc, b, h, keys, lane, p.scale, K);
    wide_store(dv_acc, b, h, keys, lane, 1.0, V);
}
