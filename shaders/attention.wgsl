// Attention on 16 x 16 blocks, forward and backward (after attention_common.wgsl).
//
// Every tile kernel runs 256 invocations on a 16 x 16 block of (query, key) pairs: invocation
// `lid` owns the pair (lid / 16, lid % 16) while scoring, and one output row (lid / 16) with the head
// dimensions lid % 16 + 16 k while accumulating. Rows of q, k, v and d_o are staged in workgroup memory
// CHUNK columns at a time, so every entry point fits the portable 16 KiB at head_dim 128 and
// no kernel materialises more than a 16 x 16 block of the T x T matrices.

const CHUNK: u32 = 32u;
// Row pitch of the staged tiles: one more than CHUNK so that 16 invocations reading 16 different
// rows at the same column hit 16 different banks.
const PITCH: u32 = 33u;
const TILE: u32 = 528u; // BLOCK * PITCH
const MAX_CHUNKS: u32 = 4u; // 128 / CHUNK: head_dim up to 128
const DIMS_PER_LANE: u32 = 8u; // 128 / BLOCK accumulated dimensions per invocation

// Staged row chunks: query side (q, d_o) and key side (k, v).
var<workgroup> q_tile: array<f32, TILE>;
var<workgroup> do_tile: array<f32, TILE>;
var<workgroup> k_tile: array<f32, TILE>;
var<workgroup> v_tile: array<f32, TILE>;
// 16 x 16 blocks of per-pair values, [query][key].
var<workgroup> pair_a: array<f32, 256>;
var<workgroup> pair_b: array<f32, 256>;
var<workgroup> pair_c: array<f32, 256>;

// Element (row r, column c) of a staged tile.
fn tile_index(r: u32, c: u32) -> u32 {
    return r * PITCH + c;
}

// Forward: one workgroup per (block of 16 queries, batch * head); online softmax over key blocks.
// Writes O = sum_j P'_ij v_j and LSE_i = m_i + log l_i.
@compute @workgroup_size(THREADS)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * BLOCK;
    let row = lid / BLOCK;
    let col = lid % BLOCK;
    let i = q0 + row;

    var m_run = NEG_BIG; // running max of the row's scores
    var l_run = 0.0; // running sum of exp(score - m_run)
    var acc: array<f32, DIMS_PER_LANE>; // unnormalised output, dims col + 16 n

    // Key blocks up to the diagonal; blocks are aligned, so key block index <= query block index.
    for (var kb = 0u; kb <= wid.x; kb++) {
        let k0 = kb * BLOCK;
        let j = k0 + col;

        var qk = 0.0;
        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            let d0 = ch * CHUNK;
            if (d0 >= p.head_dim) {
                break;
            }
            for (var slot = lid; slot < BLOCK * CHUNK; slot += THREADS) {
                let r = slot / CHUNK;
                let c = slot % CHUNK;
                q_tile[tile_index(r, c)] = load_q(b, q0 + r, h, d0 + c);
                k_tile[tile_index(r, c)] = load_k(b, k0 + r, h, d0 + c);
            }
            workgroupBarrier();
            for (var c = 0u; c < CHUNK; c++) {
                qk += q_tile[tile_index(row, c)] * k_tile[tile_index(col, c)];
            }
            workgroupBarrier();
        }
        let is_causal = causal(i, j);
        let score = select(NEG_BIG, qk * p.scale, is_causal);
        pair_a[lid] = score;
        workgroupBarrier();

        var m_block = NEG_BIG;
        for (var c = 0u; c < BLOCK; c++) {
            m_block = max(m_block, pair_a[row * BLOCK + c]);
        }
        let m_new = max(m_run, m_block);
        let weight = select(0.0, exp(score - m_new), is_causal);
        pair_b[lid] = weight;
        pair_c[lid] = weight * dropout_factor(bh, i, j);
        workgroupBarrier();

        var l_block = 0.0;
        for (var c = 0u; c < BLOCK; c++) {
            l_block += pair_b[row * BLOCK + c];
        }
        let rescale = exp(m_run - m_new);
        l_run = l_run * rescale + l_block;
        m_run = m_new;
        for (var n = 0u; n < DIMS_PER_LANE; n++) {
            acc[n] *= rescale;
        }

        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            let d0 = ch * CHUNK;
            if (d0 >= p.head_dim) {
                break;
            }
            for (var slot = lid; slot < BLOCK * CHUNK; slot += THREADS) {
                let r = slot / CHUNK;
                let c = slot % CHUNK;
                v_tile[tile_index(r, c)] = load_v(b, k0 + r, h, d0 + c);
            }
            workgroupBarrier();
            for (var part = 0u; part < 2u; part++) {
                var sum = 0.0;
                for (var c = 0u; c < BLOCK; c++) {
                    sum += pair_c[row * BLOCK + c] * v_tile[tile_index(c, col + part * BLOCK)];
                }
                acc[ch * 2u + part] += sum;
            }
            workgroupBarrier();
        }
    }

    if (i < p.seq_len) {
        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            for (var part = 0u; part < 2u; part++) {
                let d = ch * CHUNK + part * BLOCK + col;
                if (d < p.head_dim) {
                    o[at(b, i, h, d)] = acc[ch * 2u + part] / l_run;
                }
            }
        }
        if (col == 0u) {
            lse[bh * p.seq_len + i] = m_run + log(l_run);
        }
    }
}

// delta_i = dot(dO_i, O_i) per (token, head): one invocation each, workgroups linearised over x and y.
@compute @workgroup_size(THREADS)
fn backward_delta(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = (wid.x + wid.y * nwg.x) * THREADS + lid;
    let rows = p.batch * p.seq_len * p.heads;
    if (g >= rows) {
        return;
    }
    let token = g / p.heads;
    let h = g % p.heads;
    let base = g * p.head_dim; // == at(b, t, h, 0)
    var sum = 0.0;
    for (var d = 0u; d < p.head_dim; d++) {
        sum += d_o[base + d] * o[base + d];
    }
    let b = token / p.seq_len;
    let t = token % p.seq_len;
    delta[(b * p.heads + h) * p.seq_len + t] = sum;
}

// Scores and output-gradient products of the 16 x 16 block (queries q0.., keys k0..) for this
// invocation's pair: x = q_i . k_j (unscaled), y = dO_i . v_j.
fn pair_dots(b: u32, h: u32, q0: u32, k0: u32, lid: u32) -> vec2<f32> {
    let row = lid / BLOCK;
    let col = lid % BLOCK;
    var dots = vec2<f32>(0.0);
    for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
        let d0 = ch * CHUNK;
        if (d0 >= p.head_dim) {
            break;
        }
        for (var slot = lid; slot < BLOCK * CHUNK; slot += THREADS) {
            let r = slot / CHUNK;
            let c = slot % CHUNK;
            let at_tile = tile_index(r, c);
            q_tile[at_tile] = load_q(b, q0 + r, h, d0 + c);
            do_tile[at_tile] = load_do(b, q0 + r, h, d0 + c);
            k_tile[at_tile] = load_k(b, k0 + r, h, d0 + c);
            v_tile[at_tile] = load_v(b, k0 + r, h, d0 + c);
        }
        workgroupBarrier();
        for (var c = 0u; c < CHUNK; c++) {
            dots.x += q_tile[tile_index(row, c)] * k_tile[tile_index(col, c)];
            dots.y += do_tile[tile_index(row, c)] * v_tile[tile_index(col, c)];
        }
        workgroupBarrier();
    }
    return dots;
}

// For this invocation's pair: (P'_ij, dS_ij) with P = exp(s q.k - LSE_i), P' = P * drop,
// dS = P (dP' * drop - delta_i); zero outside the causal triangle.
fn pair_grads(b: u32, h: u32, q0: u32, k0: u32, lid: u32) -> vec2<f32> {
    let bh = b * p.heads + h;
    let i = q0 + lid / BLOCK;
    let j = k0 + lid % BLOCK;
    let dots = pair_dots(b, h, q0, k0, lid);
    if (!causal(i, j)) {
        return vec2<f32>(0.0);
    }
    let row_stat = bh * p.seq_len + i;
    let prob = exp(dots.x * p.scale - lse[row_stat]);
    let drop = dropout_factor(bh, i, j);
    return vec2<f32>(prob * drop, prob * (dots.y * drop - delta[row_stat]));
}

// dK, dV: one workgroup per (block of 16 keys, batch * head), looping over the query blocks at or after
// the diagonal. dV_j = sum_i P'_ij dO_i; dK_j = s sum_i dS_ij Q_i. Invocation lid accumulates key
// row lid / 16, dimensions lid % 16 + 16 n.
@compute @workgroup_size(THREADS)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let k0 = wid.x * BLOCK;
    let key_row = lid / BLOCK;
    let lane = lid % BLOCK;
    let query_blocks = (p.seq_len + BLOCK - 1u) / BLOCK;

    var dk_acc: array<f32, DIMS_PER_LANE>;
    var dv_acc: array<f32, DIMS_PER_LANE>;
    for (var qb = wid.x; qb < query_blocks; qb++) {
        let q0 = qb * BLOCK;
        let grads = pair_grads(b, h, q0, k0, lid);
        pair_a[lid] = grads.x; // P'
        pair_b[lid] = grads.y; // dS
        workgroupBarrier();

        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            let d0 = ch * CHUNK;
            if (d0 >= p.head_dim) {
                break;
            }
            for (var slot = lid; slot < BLOCK * CHUNK; slot += THREADS) {
                let r = slot / CHUNK;
                let c = slot % CHUNK;
                q_tile[tile_index(r, c)] = load_q(b, q0 + r, h, d0 + c);
                do_tile[tile_index(r, c)] = load_do(b, q0 + r, h, d0 + c);
            }
            workgroupBarrier();
            for (var part = 0u; part < 2u; part++) {
                let c = lane + part * BLOCK;
                var sum_k = 0.0;
                var sum_v = 0.0;
                for (var r = 0u; r < BLOCK; r++) {
                    let pair = r * BLOCK + key_row;
                    sum_k += pair_b[pair] * q_tile[tile_index(r, c)];
                    sum_v += pair_a[pair] * do_tile[tile_index(r, c)];
                }
                dk_acc[ch * 2u + part] += sum_k;
                dv_acc[ch * 2u + part] += sum_v;
            }
            workgroupBarrier();
        }
    }

    let j = k0 + key_row;
    if (j < p.seq_len) {
        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            for (var part = 0u; part < 2u; part++) {
                let d = ch * CHUNK + part * BLOCK + lane;
                if (d < p.head_dim) {
                    dqkv[qkv_at(K, b, j, h, d)] = dk_acc[ch * 2u + part] * p.scale;
                    dqkv[qkv_at(V, b, j, h, d)] = dv_acc[ch * 2u + part];
                }
            }
        }
    }
}

// dQ: one workgroup per (block of 16 queries, batch * head), looping over the key blocks up to the
// diagonal. dQ_i = s sum_j dS_ij K_j. Invocation lid accumulates query row lid / 16, dimensions
// lid % 16 + 16 n.
@compute @workgroup_size(THREADS)
fn backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bh = wid.y;
    let b = bh / p.heads;
    let h = bh % p.heads;
    let q0 = wid.x * BLOCK;
    let row = lid / BLOCK;
    let lane = lid % BLOCK;

    var dq_acc: array<f32, DIMS_PER_LANE>;
    for (var kb = 0u; kb <= wid.x; kb++) {
        let k0 = kb * BLOCK;
        pair_b[lid] = pair_grads(b, h, q0, k0, lid).y; // dS
        workgroupBarrier();

        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            let d0 = ch * CHUNK;
            if (d0 >= p.head_dim) {
                break;
            }
            for (var slot = lid; slot < BLOCK * CHUNK; slot += THREADS) {
                let r = slot / CHUNK;
                let c = slot % CHUNK;
                k_tile[tile_index(r, c)] = load_k(b, k0 + r, h, d0 + c);
            }
            workgroupBarrier();
            for (var part = 0u; part < 2u; part++) {
                let c = lane + part * BLOCK;
                var sum = 0.0;
                for (var key = 0u; key < BLOCK; key++) {
                    sum += pair_b[row * BLOCK + key] * k_tile[tile_index(key, c)];
                }
                dq_acc[ch * 2u + part] += sum;
            }
            workgroupBarrier();
        }
    }

    let i = q0 + row;
    if (i < p.seq_len) {
        for (var ch = 0u; ch < MAX_CHUNKS; ch++) {
            for (var part = 0u; part < 2u; part++) {
                let d = ch * CHUNK + part * BLOCK + lane;
                if (d < p.head_dim) {
                    dqkv[qkv_at(Q, b, i, h, d)] = dq_acc[ch * 2u + part] * p.scale;
                }
            }
        }
    }
}
