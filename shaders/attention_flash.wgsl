// Attention forward built like FlashAttention-2 (after attention_common.wgsl), with the outputs of
// attention.wgsl's `forward` (O and the row log-sum-exp, dropout from the same mask).
//
// A workgroup owns FLASH_Q = 64 queries of one (sequence, head) and keeps them, and their output
// accumulator, in registers for the whole pass: invocation lid owns query row lid / 4 and, of it, the
// head dimensions lane + 4 m (lane = lid % 4, m < 32), of q (loaded once) and of the accumulator. Key and
// value tiles of FLASH_KEYS rows (prepended per build: 8 fits the portable 16 KiB, 16 needs 32 KiB)
// stream through workgroup memory. Per tile each invocation forms its partial q . k over its dimensions
// for every key of the tile; the 4 partials of a row meet in workgroup memory, and each invocation adds
// them into the row's FLASH_KEYS scores (a register tile, the same sums in the same order in all 4
// invocations of the row), keeps the running max and sum (online softmax), and adds P' V for its
// dimensions. Key tiles past the block's last query (above the causal diagonal) are never visited.
// The dropout mask comes from one Philox call per 4 keys: the words `dropout_factor` (and the host's
// `keep`) use.
//
// Workgroup memory: K and V tiles [FLASH_KEYS][128] and the partial scores [4][64][FLASH_KEYS], that is
// 2048 * FLASH_KEYS bytes.

const FLASH_Q: u32 = 64u; // queries per workgroup: THREADS / FLASH_LANES
const FLASH_LANES: u32 = 4u; // invocations per query row
const FLASH_DIMS: u32 = 32u; // head dimensions per invocation: MAX_HEAD_DIM / FLASH_LANES
const FLASH_PITCH: u32 = 128u; // row pitch of the staged K and V tiles: MAX_HEAD_DIM
const FLASH_V_AT: u32 = FLASH_KEYS * FLASH_PITCH;

var<workgroup> flash_kv: array<f32, 2u * FLASH_KEYS * FLASH_PITCH>;
var<workgroup> flash_partial: array<f32, FLASH_LANES * FLASH_Q * FLASH_KEYS>;

// The dropout factors M / (1 - p) of query i with keys j0 .. j0 + 3 (j0 a multiple of 4).
fn dropout_factors4(bh: u32, i: u32, j0: u32) -> vec4<f32> {
    if (p.dropout == 0u) {
        return vec4<f32>(1.0);
    }
    let words = philox(vec2<u32>(p.key_lo, p.key_hi), vec4<u32>(i, j0 / 4u, bh, DROPOUT_DOMAIN));
    var factors: vec4<f32>;
    for (var c = 0u; c < 4u; c++) {
        factors[c] = select(0.0, p.keep_scale, unit_f32(words[c]) >= p.drop_p);
    }
    return factors;
}

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
        workgroupBarrier();
        // Partial dot products over this invocation's dimensions.
        for (var key = 0u; key < FLASH_KEYS; key++) {
            var dot = 0.0;
            for (var m = 0u; m < dims; m++) {
                dot = fma(q_reg[m], flash_kv[key * FLASH_PITCH + lane + FLASH_LANES * m], dot);
            }
            flash_partial[(lane * FLASH_Q + row) * FLASH_KEYS + key] = dot;
        }
        workgroupBarrier();
        // The row's scores, the same in its 4 invocations.
        var s: array<f32, FLASH_KEYS>;
        var m_block = NEG_BIG;
        for (var key = 0u; key < FLASH_KEYS; key++) {
            var dot = 0.0;
            for (var l = 0u; l < FLASH_LANES; l++) {
                dot += flash_partial[(l * FLASH_Q + row) * FLASH_KEYS + key];
            }
            s[key] = select(NEG_BIG, dot * p.scale, causal(i, k0 + key));
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
        // The next tile overwrites K, V and the partials.
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
