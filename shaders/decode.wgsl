// Decoding one token at a time (src/ops/decode.rs, src/model/infer/gpu.rs): the kernels of a decode step
// whose position lives on the GPU, in `state[0]`, so that every step is the same recorded dispatches.
// `tokens` holds the prompt and what is generated; `state[1]` is the prompt's length.
// Built on group_reduce_*.wgsl (prepended); WG, ROWS and the flag bits are prepended from src/ops/decode.rs.

struct Params {
    rows: u32,
    cols: u32,
    flags: u32,
    heads: u32,
    head_dim: u32,
    capacity: u32,
    width: u32,
    allowed: u32,
    key_lo: u32,
    key_hi: u32,
    temperature: f32,
    top_p: f32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One binding list for every entry point; what each binding holds per entry point:
//   entry        x       w         bias       y            t5           t6
//   matvec       x       W         bias       y
//   embed                table                y
//   rope_append  qkv                          cache_k      cache_v      inv_freq
//   attention    qkv     cache_k   cache_v    o            scores
//   perceive     x       kernel    conv bias  perception   ring
//   sample       logits
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> t5: array<f32>;
@group(0) @binding(6) var<storage, read_write> t6: array<f32>;
@group(0) @binding(7) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(8) var<storage, read_write> state: array<u32>;

// The lowest finite f32: below every logit a model computes.
const NEG_INF: f32 = -3.40282347e38;

fn linear(inv: Invocation) -> u32 {
    return (inv.wid.x + inv.wid.y * inv.nwg.x) * WG + inv.lid;
}

// y[r] = sum_j W[r, j] x[j] (+ bias[r]) (+ y[r]) for ROWS rows per workgroup: the invocations read
// consecutive columns of a row together (coalesced), then reduce each row with group_sum.
@compute @workgroup_size(256)
fn matvec(inv: Invocation) {
    let first = (inv.wid.x + inv.wid.y * inv.nwg.x) * ROWS;
    var acc: array<f32, ROWS>;
    for (var r = 0u; r < ROWS; r++) {
        acc[r] = 0.0;
    }
    for (var j = inv.lid; j < p.cols; j += WG) {
        let xj = x[j];
        for (var r = 0u; r < ROWS; r++) {
            if (first + r < p.rows) {
                acc[r] += w[(first + r) * p.cols + j] * xj;
            }
        }
    }
    for (var r = 0u; r < ROWS; r++) {
        let total = group_sum(inv, acc[r]);
        let row = first + r;
        if (inv.lid == 0u && row < p.rows) {
            var value = total;
            if ((p.flags & FLAG_BIAS) != 0u) {
                value += bias[row];
            }
            if ((p.flags & FLAG_ACCUMULATE) != 0u) {
                value += y[row];
            }
            y[row] = value;
        }
    }
}

// y = table[tokens[pos]] (a zero row for an id outside the table); rows: vocab, cols: dim.
@compute @workgroup_size(256)
fn embed(inv: Invocation) {
    let i = linear(inv);
    if (i >= p.cols) {
        return;
    }
    let id = tokens[state[0]];
    var value = 0.0;
    if (id < p.rows) {
        value = w[id * p.cols + i];
    }
    y[i] = value;
}

// Rotates q (in place) and k at the position by the halves convention of shaders/rope.wgsl (element c
// of a head pairs with c + head_dim / 2), and appends the rotated k and v to the caches at row pos; q, k
// and v lie side by side in x, as the fused projection writes them. One invocation per pair,
// [heads * head_dim / 2] of them.
@compute @workgroup_size(256)
fn rope_append(inv: Invocation) {
    let pair = linear(inv);
    let half = p.head_dim / 2u;
    if (pair >= p.heads * half) {
        return;
    }
    let d = p.heads * p.head_dim;
    let pos = state[0];
    let c = pair % half;
    let i = (pair / half) * p.head_dim + c;
    let j = i + half;
    let angle = f32(pos) * t6[c];
    let cs = cos(angle);
    let sn = sin(angle);
    let q1 = x[i];
    let q2 = x[j];
    x[i] = q1 * cs - q2 * sn;
    x[j] = q2 * cs + q1 * sn;
    let k1 = x[d + i];
    let k2 = x[d + j];
    y[pos * d + i] = k1 * cs - k2 * sn;
    y[pos * d + j] = k2 * cs + k1 * sn;
    t5[pos * d + i] = x[2u * d + i];
    t5[pos * d + j] = x[2u * d + j];
}

// Single-query attention of one head (one workgroup) over the cached keys 0..=pos: scores in the global
// scratch t5 [heads, capacity], softmax with the maximum subtracted, then o = softmax . V. The query is
// the first third of x (qkv).
@compute @workgroup_size(256)
fn attention(inv: Invocation) {
    let head = inv.wid.x + inv.wid.y * inv.nwg.x;
    let d = p.heads * p.head_dim;
    let n = state[0] + 1u;
    let hd = p.head_dim;
    let off = head * hd;
    let scores = head * p.capacity;
    var largest = NEG_INF;
    for (var j = inv.lid; j < n; j += WG) {
        var s = 0.0;
        for (var c = 0u; c < hd; c++) {
            s += x[off + c] * w[j * d + off + c];
        }
        s *= p.scale;
        t5[scores + j] = s;
        largest = max(largest, s);
    }
    let m = group_max(inv, largest);
    var sum = 0.0;
    for (var j = inv.lid; j < n; j += WG) {
        let e = exp(t5[scores + j] - m);
        t5[scores + j] = e;
        sum += e;
    }
    let z = group_sum(inv, sum);
    // The weights each invocation wrote, visible to all before the weighted sum reads them.
    storageBarrier();
    workgroupBarrier();
    for (var c = inv.lid; c < hd; c += WG) {
        var o = 0.0;
        for (var j = 0u; j < n; j++) {
            o += t5[scores + j] * bias[j * d + off + c];
        }
        y[off + c] = o / z;
    }
}

// The NCA cell's causal perception: stores x in the ring t5 [width, dim] at slot pos % width, then
// perception = conv bias + sum_j kernel[j] * (the cell j back), cells before the start being zero.
@compute @workgroup_size(256)
fn perceive(inv: Invocation) {
    let c = linear(inv);
    if (c >= p.cols) {
        return;
    }
    let pos = state[0];
    let xc = x[c];
    t5[(pos % p.width) * p.cols + c] = xc;
    var value = bias[c] + w[c] * xc;
    let back = min(pos, p.width - 1u);
    for (var j = 1u; j <= back; j++) {
        value += w[j * p.cols + c] * t5[((pos - j) % p.width) * p.cols + c];
    }
    y[c] = value;
}

// The lowest index holding the workgroup's largest value (each invocation brings its own best).
fn group_argmax(inv: Invocation, value: f32, index: u32) -> u32 {
    let m = group_max(inv, value);
    var candidate = NEG_INF;
    if (value == m) {
        candidate = -f32(index);
    }
    return u32(-group_max(inv, candidate));
}

// exp(logit / T - m) of token i.
fn weight(i: u32, m: f32) -> f32 {
    return exp(x[i] / p.temperature - m);
}

// Picks the next token from the first `allowed` logits (one workgroup): greedy at temperature 0 (ties to
// the lowest index); otherwise top-p by a threshold on the unnormalised probabilities e_i, the largest
// whose kept mass (of e_i >= threshold) still reaches top_p * sum e, found by bisecting its f32 bits
// (positive floats order as their bits), then Gumbel-max over the kept tokens with Philox noise (key from
// the host, counter = token index). Writes tokens[pos + 1] unless that is still the prompt's, and
// advances the position.
@compute @workgroup_size(256)
fn sample(inv: Invocation) {
    let n = p.allowed;
    let pos = state[0];
    var choice = 0u;
    if (p.temperature <= 0.0) {
        var best = NEG_INF;
        var at = 0u;
        for (var i = inv.lid; i < n; i += WG) {
            if (x[i] > best) {
                best = x[i];
                at = i;
            }
        }
        choice = group_argmax(inv, best, at);
    } else {
        var local_max = NEG_INF;
        for (var i = inv.lid; i < n; i += WG) {
            local_max = max(local_max, x[i] / p.temperature);
        }
        let m = group_max(inv, local_max);
        var local_sum = 0.0;
        for (var i = inv.lid; i < n; i += WG) {
            local_sum += weight(i, m);
        }
        let goal = p.top_p * group_sum(inv, local_sum);
        // Invariant: mass(lo) reaches the goal (lo = 0 keeps every token), mass(hi) does not (hi is
        // above 1.0, the largest e). 31 halvings close the range of bit patterns.
        var lo = 0u;
        var hi = 0x3f800001u; // the bits of 1.0, plus one
        if (p.top_p < 1.0) {
            for (var step = 0u; step < 32u; step++) {
                let mid = lo + (hi - lo) / 2u;
                let t = bitcast<f32>(mid);
                var kept = 0.0;
                for (var i = inv.lid; i < n; i += WG) {
                    let e = weight(i, m);
                    if (e >= t) {
                        kept += e;
                    }
                }
                let mass = group_sum(inv, kept);
                if (mass >= goal) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        let threshold = bitcast<f32>(lo);
        let key = vec2<u32>(p.key_lo, p.key_hi);
        var best = NEG_INF;
        var at = 0u;
        for (var i = inv.lid; i < n; i += WG) {
            if (weight(i, m) >= threshold) {
                let score = x[i] / p.temperature + gumbel(philox(key, vec4<u32>(i, 0u, 0u, 0u)).x);
                if (score > best) {
                    best = score;
                    at = i;
                }
            }
        }
        choice = group_argmax(inv, best, at);
    }
    if (inv.lid == 0u) {
        let next = pos + 1u;
        if (next < p.capacity && next >= state[1]) {
            tokens[next] = choice;
        }
        state[0] = next;
    }
}
