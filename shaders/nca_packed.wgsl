// NCA simulation and tokenisation, packed: one workgroup runs SPW simulations, each grid a byte per cell
// (four cells to a u32, rows padded to ROW_WORDS words), one invocation updating the four cells of a
// word. Every cell's arithmetic is that of shaders/nca.wgsl in the same order (conv rows k = 0..8,
// hidden units j = 0..H-1 summed over channels i, logits summed over j), so the tokens are the same bit
// for bit; with SKIP_DEAD a hidden unit the ReLU zeroes adds nothing to the logits and is skipped
// (adding h * w with h = 0 leaves every logit as it is). Constants are prepended by src/nca/gpu.rs (those
// of nca.wgsl, and SPW, ROW_WORDS, WORDS, SKIP_DEAD); the Philox functions come from rng.wgsl, the
// parameters and bindings from nca_common.wgsl.

// The rule table of each simulation of the workgroup, one after another.
var<workgroup> table: array<f32, SPW * RULE_LEN>;
// Simulation l's grid half h starts at word (2 l + h) WORDS.
var<workgroup> grid: array<u32, 2 * SPW * WORDS>;
var<workgroup> keys: array<vec2<u32>, SPW>;

fn cell_at(base: u32, y: u32, x: u32) -> u32 {
    return (grid[base + y * ROW_WORDS + x / 4u] >> (8u * (x % 4u))) & 0xFFu;
}

fn frame_len() -> u32 {
    return select(PATCHES, PATCHES + 2u, params.delimiters == 1u);
}

// Writes frame f's tokens of the workgroup's `count` simulations from their grid halves `half`.
fn emit(first: u32, count: u32, f: u32, half: u32, lid: u32) {
    let flen = frame_len();
    for (var i = lid; i < count * flen; i += WG) {
        let l = i / flen;
        let q = i % flen;
        let pos = f * flen + q;
        if (pos >= params.tokens_per_sim) {
            continue;
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
            let base = (2u * l + half) * WORDS;
            // x is even: both cells of a patch row lie in one word.
            let top = grid[base + y * ROW_WORDS + x / 4u] >> (8u * (x % 4u));
            let bottom = grid[base + (y + 1u) * ROW_WORDS + x / 4u] >> (8u * (x % 4u));
            token = (top & 0xFFu) + N * ((top >> 8u) & 0xFFu) + N * N * (bottom & 0xFFu)
                + N * N * N * ((bottom >> 8u) & 0xFFu);
        }
        tokens[(first + l) * params.tokens_per_sim + pos] = token;
    }
}

// The next state of cell (y, x) of the grid at word `src`, under the rule table at `tab`: the same
// operations as nca.wgsl's next_state.
fn next_state(key: vec2<u32>, t: u32, y: u32, x: u32, src: u32, tab: u32) -> u32 {
    let cell = y * G + x;
    var conv: array<f32, C>;
    for (var o = 0u; o < C; o++) {
        conv[o] = table[tab + CONV_BIAS + o];
    }
    for (var k = 0u; k < 9u; k++) {
        let yy = (y + G + k / 3u - 1u) % G;
        let xx = (x + G + k % 3u - 1u) % G;
        let row = tab + (k * N + cell_at(src, yy, xx)) * C;
        for (var o = 0u; o < C; o++) {
            conv[o] = conv[o] + table[row + o];
        }
    }
    var logits: array<f32, N>;
    for (var k = 0u; k < N; k++) {
        logits[k] = table[tab + OUT_BIAS + k];
    }
    for (var j = 0u; j < H; j++) {
        var acc = table[tab + HIDDEN_BIAS + j];
        for (var i = 0u; i < C; i++) {
            acc = acc + conv[i] * table[tab + HIDDEN + i * H + j];
        }
        let hidden = max(acc, 0.0);
        if (!SKIP_DEAD || hidden > 0.0) {
            for (var k = 0u; k < N; k++) {
                logits[k] = logits[k] + hidden * table[tab + OUT + j * N + k];
            }
        }
    }
    let current = cell_at(src, y, x);
    var best_logit = -3.0e38;
    for (var k = 0u; k < N; k++) {
        if (k == current) {
            logits[k] = logits[k] + params.identity_bias;
        }
        best_logit = max(best_logit, logits[k]);
    }
    return gumbel_max(logits, best_logit, key, t, cell);
}

@compute @workgroup_size(WG)
fn simulate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = (wid.y * params.row + wid.x) * SPW;
    if (first >= params.sims) {
        return;
    }
    let count = min(SPW, params.sims - first);
    for (var i = lid; i < count * RULE_LEN; i += WG) {
        let l = i / RULE_LEN;
        table[i] = rules[sims[first + l].rule * RULE_LEN + i % RULE_LEN];
    }
    for (var w = lid; w < count * WORDS; w += WG) {
        let l = w / WORDS;
        let word = w % WORDS;
        let header = sims[first + l];
        let key = vec2<u32>(header.key_lo, header.key_hi);
        if (word == 0u) {
            keys[l] = key;
        }
        let y = word / ROW_WORDS;
        let x0 = (word % ROW_WORDS) * 4u;
        var packed = 0u;
        for (var b = 0u; b < 4u && x0 + b < G; b++) {
            let u = unit_f32(philox(key, vec4<u32>(0u, y * G + x0 + b, 0u, DOMAIN_INITIAL_GRID)).x);
            var s = 0u;
            while (s < N - 1u && u >= header.cdf[s]) {
                s++;
            }
            packed |= s << (8u * b);
        }
        grid[2u * l * WORDS + word] = packed;
    }
    workgroupBarrier();
    let last = params.burn_in + params.frames - 1u;
    for (var t = 0u; t <= last; t++) {
        let dst = t % 2u;
        if (t > 0u) {
            let src = 1u - dst;
            for (var w = lid; w < count * WORDS; w += WG) {
                let l = w / WORDS;
                let word = w % WORDS;
                let y = word / ROW_WORDS;
                let x0 = (word % ROW_WORDS) * 4u;
                let key = keys[l];
                var packed = 0u;
                for (var b = 0u; b < 4u && x0 + b < G; b++) {
                    let s = next_state(key, t, y, x0 + b, (2u * l + src) * WORDS, l * RULE_LEN);
                    packed |= s << (8u * b);
                }
                grid[(2u * l + dst) * WORDS + word] = packed;
            }
            workgroupBarrier();
        }
        if (t >= params.burn_in) {
            emit(first, count, t - params.burn_in, dst, lid);
        }
    }
}
