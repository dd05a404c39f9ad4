// NCA simulation and tokenisation: one workgroup runs one simulation from its initial grid to its last
// recorded frame with the grid and the rule's lookup table in workgroup memory, and writes tokens.
// Constants G, N, C, H, CELLS, WG, RULE_LEN, the table offsets, the Gumbel bounds and the RNG domains
// are prepended by src/nca/gpu.rs; the Philox functions come from rng.wgsl, the parameters and bindings
// from nca_common.wgsl.

var<workgroup> table: array<f32, RULE_LEN>;
var<workgroup> grid: array<u32, 2 * CELLS>;

fn frame_len() -> u32 {
    return select(PATCHES, PATCHES + 2u, params.delimiters == 1u);
}

// Writes frame f's tokens from grid half `half`.
fn emit(sim: u32, f: u32, half: u32, lid: u32) {
    let flen = frame_len();
    let base = half * CELLS;
    for (var q = lid; q < flen; q += WG) {
        let pos = f * flen + q;
        if (pos >= params.tokens_per_sim) {
            break;
        }
        var token: u32;
        var p = q;
        if (params.delimiters == 1u) {
            if (q == 0u) {
                token = N * N * N * N;
            } else if (q == flen - 1u) {
                token = N * N * N * N + 1u;
            }
            p = q - 1u;
        }
        if (params.delimiters == 0u || (q > 0u && q < flen - 1u)) {
            let y = 2u * (p / (G / 2u));
            let x = 2u * (p % (G / 2u));
            let i = base + y * G + x;
            token = grid[i] + N * grid[i + 1u] + N * N * grid[i + G] + N * N * N * grid[i + G + 1u];
        }
        tokens[sim * params.tokens_per_sim + pos] = token;
    }
}

// The next state of one cell: lookup-table convolution, per-cell MLP, Gumbel-max sampling. Noise is
// drawn only for states whose logit gap to the best no Gumbel sample can close; the result equals the
// full Gumbel-max of src/nca/reference.rs because the skipped states can never win.
fn next_state(key: vec2<u32>, t: u32, cell: u32, src: u32) -> u32 {
    let y = cell / G;
    let x = cell % G;
    var conv: array<f32, C>;
    for (var o = 0u; o < C; o++) {
        conv[o] = table[CONV_BIAS + o];
    }
    for (var k = 0u; k < 9u; k++) {
        let yy = (y + G + k / 3u - 1u) % G;
        let xx = (x + G + k % 3u - 1u) % G;
        let s = grid[src + yy * G + xx];
        let row = (k * N + s) * C;
        for (var o = 0u; o < C; o++) {
            conv[o] = conv[o] + table[row + o];
        }
    }
    var hidden: array<f32, H>;
    for (var j = 0u; j < H; j++) {
        var acc = table[HIDDEN_BIAS + j];
        for (var i = 0u; i < C; i++) {
            acc = acc + conv[i] * table[HIDDEN + i * H + j];
        }
        hidden[j] = max(acc, 0.0);
    }
    let current = grid[src + cell];
    var logits: array<f32, N>;
    var best_logit = -3.0e38;
    for (var k = 0u; k < N; k++) {
        var acc = table[OUT_BIAS + k];
        for (var j = 0u; j < H; j++) {
            acc = acc + hidden[j] * table[OUT + j * N + k];
        }
        if (k == current) {
            acc = acc + params.identity_bias;
        }
        logits[k] = acc;
        best_logit = max(best_logit, acc);
    }
    return gumbel_max(logits, best_logit, key, t, cell);
}

@compute @workgroup_size(WG)
fn simulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let sim = wid.y * params.row + wid.x;
    if (sim >= params.sims) {
        return;
    }
    let header = sims[sim];
    let key = vec2<u32>(header.key_lo, header.key_hi);
    for (var i = lid; i < RULE_LEN; i += WG) {
        table[i] = rules[header.rule * RULE_LEN + i];
    }
    for (var cell = lid; cell < CELLS; cell += WG) {
        let u = unit_f32(philox(key, vec4<u32>(0u, cell, 0u, DOMAIN_INITIAL_GRID)).x);
        var s = 0u;
        while (s < N - 1u && u >= header.cdf[s]) {
            s++;
        }
        grid[cell] = s;
    }
    workgroupBarrier();
    let last = params.burn_in + params.frames - 1u;
    for (var t = 0u; t <= last; t++) {
        let dst = t % 2u;
        if (t > 0u) {
            let src = 1u - dst;
            for (var cell = lid; cell < CELLS; cell += WG) {
                grid[dst * CELLS + cell] = next_state(key, t, cell, src * CELLS);
            }
            workgroupBarrier();
        }
        if (t >= params.burn_in) {
            emit(sim, t - params.burn_in, dst, lid);
        }
    }
}
