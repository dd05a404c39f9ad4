// Attention built like FlashAttention-2 (after attention_common.wgsl), with the outputs of
// attention.wgsl's kernels (O and the row log-sum-exp, dQ, dK, dV; dropout from the same mask). The
// backward, at the end, follows the forward's structure.
//
// A workgroup owns FLASH_Q = 64 queries of one (sequence, head) and keeps them, and their output
// accumulator, in registers for the whole pass: invocation lid owns query row lid / 4 and, of it, the
// head dimensions lane + 4 m (lane = lid % 4, m < 32), of q (loaded once) and of the accumulator. Key and
// value tiles of FLASH_KEYS rows (a multiple of 4, prepended per build) stream through workgroup memory.
// Per tile each invocation forms its partial q . k over its dimensions for every key of the tile; the 4
// partials of a row meet (`flash_row_dots`, from the file built after this one: through workgroup
// memory, or through subgroup shuffles), giving the row's FLASH_KEYS scores (a register tile, the same
// sums in all 4 invocations of the row). Each invocation keeps the running max and sum (online softmax)
// and adds P' V for its dimensions. Key tiles past the block's last query (above the causal diagonal)
// are never visited. The dropout mask comes from one Philox call per 4 keys: the words
// `dropout_factor` (and the host's `keep`) use.
//
// Workgroup memory: K and V tiles [FLASH_KEYS][128], 1024 * FLASH_KEYS bytes, and whatever the row
// sums take.

const FLASH_Q: u32 = 64u; // rows (queries; keys for dK and dV) per workgroup: THREADS / FLASH_LANES
const FLASH_LANES: u32 = 4u; // invocations per row
const FLASH_DIMS: u32 = 32u; // head dimensions per invocation: MAX_HEAD_DIM / FLASH_LANES
const FLASH_PITCH: u32 = 128u; // row pitch of the staged K and V tiles: MAX_HEAD_DIM
const FLASH_V_AT: u32 = FLASH_KEYS * FLASH_PITCH;

var<workgroup> flash_kv: array<f32, 2u * FLASH_KEYS * FLASH_PITCH>;

@compute @workgroup_size(THREADS)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * FLASH_Q;
    let row = lid / FLASH_LANES;
    let lane = lid % FLASH_LANES;
    let i = q0 + row;
    // This invocation's dimensions are lane + 4 m for m < dims.
    let dims = (p.head_dim + FLASH_LANES - 1u - lane) / FLASH_LANES;

    var q_reg: array<f32, FLASH_DIMS>;
    for (var m = 0u; m < dims; m++) {
        q_reg[m] = load_q(b, i, h, lane + FLASH_LANES * m);
    }
    var acc: array<f32, FLASH_DIMS>;
    var m_run = NEG_BIG;
    var l_run = 0.0;

    let last_key = min(q0 + FLASH_Q, p.seq_len) - 1u;
    for (var k0 = 0u; k0 <= last_key; k0 += FLASH_KEYS) {
        // Stage the tile's K and V rows (head_dim columns of each; the rest is never read).
        for (var slot = lid; slot < FLASH_KEYS * p.head_dim; slot += THREADS) {
            let r = slot / p.head_dim;
            let d = slot % p.head_dim;
            flash_kv[r * FLASH_PITCH + d] = load_k(b, k0 + r, h, d);
            flash_kv[FLASH_V_AT + r * FLASH_PITCH + d] = load_v(b, k0 + r, h, d);
        }
        // The row's scores, the same in its 4 invocations.
        var s = flash_row_dots(&q_reg, 0u, row, lane, dims);
        var m_block = NEG_BIG;
        for (var key = 0u; key < FLASH_KEYS; key++) {
            s[key] = select(NEG_BIG, s[key] * p.scale, causal(i, k0 + key));
            m_block = max(m_block, s[key]);
        }
        let m_new = max(m_run, m_block);
        let rescale = exp(m_run - m_new);
        var l_block = 0.0;
        for (var g = 0u; g < FLASH_KEYS; g += 4u) {
            let drop = dropout_factors4(bh, i, k0 + g);
            for (var c = 0u; c < 4u; c++) {
                let key = g + c;
                let e = select(0.0, exp(s[key] - m_new), causal(i, k0 + key));
                l_block += e;
                s[key] = e * drop[c]; // P'
            }
        }
        l_run = l_run * rescale + l_block;
        m_run = m_new;
        for (var m = 0u; m < dims; m++) {
            var sum = acc[m] * rescale;
            for (var key = 0u; key < FLASH_KEYS; key++) {
                sum = fma(s[key], flash_kv[FLASH_V_AT + key * FLASH_PITCH + lane + FLASH_LANES * m], sum);
            }
            acc[m] = sum;
        }
        // The next tile overwrites K and V (and the partials).
        workgroupBarrier();
    }

    if (i < p.seq_len) {
        for (var m = 0u; m < dims; m++) {
            o[at(b, i, h, lane + FLASH_LANES * m)] = acc[m] / l_run;
        }
        if (lane == 0u) {
            lse[bh * p.seq_len + i] = m_run + log(l_run);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Backward in the same structure, after attention.wgsl's `backward_delta`, with the outputs of its
// `backward_dkdv` and `backward_dq`. A workgroup owns 64 rows (keys for dK and dV, queries for dQ),
// invocation lid row lid / 4 and its dimensions lane + 4 m, held in registers with the row's
// accumulators; tiles of FLASH_KEYS columns (queries, or keys) stream through the same workgroup memory
// as the forward's. Per tile the two dot products of each pair (q . k and dO . v) are each a call of
// `flash_row_dots`, so the memory is the forward's.

// Stages rows t0 .. t0 + FLASH_KEYS of (q, d_o) (queries = true) or (k, v) into the two tiles.
fn flash_stage(b: u32, h: u32, t0: u32, lid: u32, queries: bool) {
    for (var slot = lid; slot < FLASH_KEYS * p.head_dim; slot += THREADS) {
        let r = slot / p.head_dim;
        let d = slot % p.head_dim;
        if (queries) {
            flash_kv[r * FLASH_PITCH + d] = load_q(b, t0 + r, h, d);
            flash_kv[FLASH_V_AT + r * FLASH_PITCH + d] = load_do(b, t0 + r, h, d);
        } else {
            flash_kv[r * FLASH_PITCH + d] = load_k(b, t0 + r, h, d);
            flash_kv[FLASH_V_AT + r * FLASH_PITCH + d] = load_v(b, t0 + r, h, d);
        }
    }
}

// dV_j = sum_i P'_ij dO_i and dK_j = s sum_i dS_ij Q_i over the queries i >= j, streaming query tiles.
@compute @workgroup_size(THREADS)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let k0 = wid.x * FLASH_Q;
    let row = lid / FLASH_LANES;
    let lane = lid % FLASH_LANES;
    let j = k0 + row;
    let dims = (p.head_dim + FLASH_LANES - 1u - lane) / FLASH_LANES;

    var k_reg: array<f32, FLASH_DIMS>;
    var v_reg: array<f32, FLASH_DIMS>;
    for (var m = 0u; m < dims; m++) {
        k_reg[m] = load_k(b, j, h, lane + FLASH_LANES * m);
        v_reg[m] = load_v(b, j, h, lane + FLASH_LANES * m);
    }
    var dk_acc: array<f32, FLASH_DIMS>;
    var dv_acc: array<f32, FLASH_DIMS>;

    // Query tiles from the block's first key (above the diagonal nothing is visited).
    for (var i0 = k0; i0 < p.seq_len; i0 += FLASH_KEYS) {
        flash_stage(b, h, i0, lid, true);
        let s = flash_row_dots(&k_reg, 0u, row, lane, dims);
        let dp = flash_row_dots(&v_reg, FLASH_V_AT, row, lane, dims);
        var p_drop: array<f32, FLASH_KEYS>;
        var ds: array<f32, FLASH_KEYS>;
        for (var col = 0u; col < FLASH_KEYS; col++) {
            let i = i0 + col;
            let stat = bh * p.seq_len + min(i, p.seq_len - 1u);
            let prob = select(0.0, exp(s[col] * p.scale - lse[stat]), causal(i, j));
            // One key per row here, so one Philox call per pair, as `dropout_factor`.
            let drop = dropout_factor(bh, i, j);
            p_drop[col] = prob * drop;
            ds[col] = prob * (dp[col] * drop - delta[stat]);
        }
        for (var m = 0u; m < dims; m++) {
            var sum_k = dk_acc[m];
            var sum_v = dv_acc[m];
            for (var col = 0u; col < FLASH_KEYS; col++) {
                let at = col * FLASH_PITCH + lane + FLASH_LANES * m;
                sum_k = fma(ds[col], flash_kv[at], sum_k);
                sum_v = fma(p_drop[col], flash_kv[FLASH_V_AT + at], sum_v);
            }
            dk_acc[m] = sum_k;
            dv_acc[m] = sum_v;
        }
        // The next tile overwrites the staged rows.
        workgroupBarrier();
    }

    if (j < p.seq_len) {
        for (var m = 0u; m < dims; m++) {
            let d = lane + FLASH_LANES * m;
            dqkv[qkv_at(K, b, j, h, d)] = dk_acc[m] * p.scale;
            dqkv[qkv_at(V, b, j, h, d)] = dv_acc[m];
        }
    }
}

// dQ_i = s sum_j dS_ij K_j over the keys j <= i, streaming key tiles.
@compute @workgroup_size(THREADS)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * FLASH_Q;
    let row = lid / FLASH_LANES;
    let lane = lid % FLASH_LANES;
    let i = q0 + row;
    let dims = (p.head_dim + FLASH_LANES - 1u - lane) / FLASH_LANES;
    let stat = bh * p.seq_len + min(i, p.seq_len - 1u);
    let row_lse = lse[stat];
    let row_delta = delta[stat];

    var q_reg: array<f32, FLASH_DIMS>;
    var do_reg: array<f32, FLASH_DIMS>;
    for (var m = 0u; m < dims; m++) {
        q_reg[m] = load_q(b, i, h, lane + FLASH_LANES * m);
        do_reg[m] = load_do(b, i, h, lane + FLASH_LANES * m);
    }
    var dq_acc: array<f32, FLASH_DIMS>;

    let last_key = min(q0 + FLASH_Q, p.seq_len) - 1u;
    for (var k0 = 0u; k0 <= last_key; k0 += FLASH_KEYS) {
        flash_stage(b, h, k0, lid, false);
        let s = flash_row_dots(&q_reg, 0u, row, lane, dims);
        let dp = flash_row_dots(&do_reg, FLASH_V_AT, row, lane, dims);
        var ds: array<f32, FLASH_KEYS>;
        for (var g = 0u; g < FLASH_KEYS; g += 4u) {
            let drop = dropout_factors4(bh, i, k0 + g);
            for (var c = 0u; c < 4u; c++) {
                let col = g + c;
                let prob = select(0.0, exp(s[col] * p.scale - row_lse), causal(i, k0 + col));
                ds[col] = prob * (dp[col] * drop[c] - row_delta);
            }
        }
        for (var m = 0u; m < dims; m++) {
            var sum = dq_acc[m];
            for (var col = 0u; col < FLASH_KEYS; col++) {
                sum = fma(ds[col], flash_kv[col * FLASH_PITCH + lane + FLASH_LANES * m], sum);
            }
            dq_acc[m] = sum;
        }
        workgroupBarrier();
    }

    if (i < p.seq_len) {
        for (var m = 0u; m < dims; m++) {
            dqkv[qkv_at(Q, b, i, h, lane + FLASH_LANES * m)] = dq_acc[m] * p.scale;
        }
    }
}
