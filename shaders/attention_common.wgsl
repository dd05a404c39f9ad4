// Causal multi-head attention, flash style (docs/gradients.md), with dropout on the probabilities: what every
// attention kernel shares (src/ops/attention.rs prepends it to each kernel file).
// qkv, dqkv: [batch * seq_len, 3 * heads * head_dim] row-major, each row a token's queries, keys and values
// (the product of the fused projection); o, d_o: [batch * seq_len, heads * head_dim]; lse, delta:
// [batch, heads, seq_len].
// The dropout mask is regenerated from Philox wherever it is needed (never stored).

// BLOCK, WIDE_Q, WIDE_K, THREADS (invocations per workgroup of the f32 kernels) and DROPOUT_DOMAIN are
// prepended from src/ops/attention.rs.
// Stands in for -infinity (WGSL has no infinite literals); exp of it minus anything finite is 0.
const NEG_BIG: f32 = -1.0e30;

struct Params {
    batch: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    scale: f32,
    drop_p: f32,
    // 1 / (1 - drop_p)
    keep_scale: f32,
    dropout: u32,
    key_lo: u32,
    key_hi: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> d_o: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;
@group(0) @binding(6) var<storage, read_write> delta: array<f32>;

// The thirds of a qkv (or dqkv) row.
const Q: u32 = 0u;
const K: u32 = 1u;
const V: u32 = 2u;

// Index of element d of head h at token t of sequence b in the [tokens, heads * head_dim] layout.
fn at(b: u32, t: u32, h: u32, d: u32) -> u32 {
    return ((b * p.seq_len + t) * p.heads + h) * p.head_dim + d;
}

// The same element of part `part` (Q, K or V) in the [tokens, 3 * heads * head_dim] layout.
fn qkv_at(part: u32, b: u32, t: u32, h: u32, d: u32) -> u32 {
    let width = p.heads * p.head_dim;
    return (b * p.seq_len + t) * 3u * width + part * width + h * p.head_dim + d;
}

fn in_range(t: u32, d: u32) -> bool {
    return t < p.seq_len && d < p.head_dim;
}

// Guarded loads: rows past the sequence and columns past head_dim read as 0.
fn load_part(part: u32, b: u32, t: u32, h: u32, d: u32) -> f32 {
    return select(0.0, qkv[min(qkv_at(part, b, t, h, d), arrayLength(&qkv) - 1u)], in_range(t, d));
}

fn load_q(b: u32, t: u32, h: u32, d: u32) -> f32 {
    return load_part(Q, b, t, h, d);
}

fn load_k(b: u32, t: u32, h: u32, d: u32) -> f32 {
    return load_part(K, b, t, h, d);
}

fn load_v(b: u32, t: u32, h: u32, d: u32) -> f32 {
    return load_part(V, b, t, h, d);
}

fn load_do(b: u32, t: u32, h: u32, d: u32) -> f32 {
    return select(0.0, d_o[min(at(b, t, h, d), arrayLength(&d_o) - 1u)], in_range(t, d));
}

// The dropout factor of pair (query i, key j) in head bh = b * heads + h: M / (1 - p), or 1 without
// dropout. The mask is the one `keep` in src/ops/attention.rs computes on the host.
fn dropout_factor(bh: u32, i: u32, j: u32) -> f32 {
    if (p.dropout == 0u) {
        return 1.0;
    }
    let words = philox(vec2<u32>(p.key_lo, p.key_hi), vec4<u32>(i, j / 4u, bh, DROPOUT_DOMAIN));
    return select(0.0, p.keep_scale, unit_f32(words[j % 4u]) >= p.drop_p);
}

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

// Pair (i, j) is scored when it is causal and inside the sequence.
fn causal(i: u32, j: u32) -> bool {
    return j <= i && i < p.seq_len;
}
