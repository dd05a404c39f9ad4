// Rotary position embedding in the rotate-half convention (Hugging Face Llama), and its backward
// (docs/gradients.md): y_i = x_i cos a_i - x_{i+D/2} sin a_i, y_{i+D/2} = x_{i+D/2} cos a_i + x_i sin a_i
// with a_i = pos * inv_freq[i], pos = row % seq_len. The backward pass rotates by -a.
// One invocation per (row, head, i < D/2) pair, 256 per workgroup, linearised over x and y. Each invocation
// reads both elements of its pair before writing them, so dst may be src (in place).
// The *_qk entry points rotate the queries and the keys of src in place, side by side in each row as
// the fused projection writes them ([tokens, 3 * heads * head_dim]: queries, keys, values), by the same
// angles, so each cosine and sine serves both and one dispatch does the work of two.

const WG: u32 = 256u;

// 2 pi = TWO_PI_HI + TWO_PI_LO. TWO_PI_HI = 201 / 32 has 8 significant bits, so k * TWO_PI_HI is exact
// for |k| < 2^16 (positions up to about 4e5).
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

struct Params {
    rows: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    // Elements from one row (token) to the next: heads * head_dim, or three times that in a qkv matrix.
    row_stride: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    // inv_freq[i] for i < head_dim / 2, four per vec4 (uniform arrays have a 16-byte stride).
    inv_freq: array<vec4<f32>, 32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

// The angle's cosine and sine, after reducing it to about [-pi, pi]: GPU sin and cos are accurate only
// there, and a_i reaches seq_len radians.
fn cos_sin(angle: f32) -> vec2<f32> {
    let turns = round(angle * INV_TWO_PI);
    let reduced = (angle - turns * TWO_PI_HI) - turns * TWO_PI_LO;
    return vec2<f32>(cos(reduced), sin(reduced));
}

// Where pair `pair` lies (its first element's index and the offset of its second) and the cosine and
// sine of its angle a, sign * a.
struct Turn {
    first: u32,
    half: u32,
    cs: vec2<f32>,
}

fn turn(pair: u32, sign: f32) -> Turn {
    let half = p.head_dim / 2u;
    let i = pair % half;
    let row_head = pair / half;
    let row = row_head / p.heads;
    let pos = row % p.seq_len;
    // f32 product as Hugging Face computes it (position times f32 inverse frequency).
    let cs = cos_sin(f32(pos) * p.inv_freq[i / 4u][i % 4u]);
    let first = row * p.row_stride + (row_head % p.heads) * p.head_dim + i;
    return Turn(first, half, vec2<f32>(cs.x, sign * cs.y));
}

fn pairs() -> u32 {
    return p.rows * p.heads * (p.head_dim / 2u);
}

// Rotates pair `pair` of src into dst by sign * a.
fn rotate(pair: u32, sign: f32) {
    if (pair >= pairs()) {
        return;
    }
    let t = turn(pair, sign);
    let a = src[t.first];
    let b = src[t.first + t.half];
    dst[t.first] = a * t.cs.x - b * t.cs.y;
    dst[t.first + t.half] = b * t.cs.x + a * t.cs.y;
}

// Rotates pair `pair` of the queries in src, and the same pair of the keys beside them, in place by
// sign * a.
fn rotate_qk(pair: u32, sign: f32) {
    if (pair >= pairs()) {
        return;
    }
    let t = turn(pair, sign);
    let qa = src[t.first];
    let qb = src[t.first + t.half];
    src[t.first] = qa * t.cs.x - qb * t.cs.y;
    src[t.first + t.half] = qb * t.cs.x + qa * t.cs.y;
    let key = t.first + p.heads * p.head_dim;
    let ka = src[key];
    let kb = src[key + t.half];
    src[key] = ka * t.cs.x - kb * t.cs.y;
    src[key + t.half] = kb * t.cs.x + ka * t.cs.y;
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate((wid.x + wid.y * nwg.x) * WG + lid, 1.0);
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate((wid.x + wid.y * nwg.x) * WG + lid, -1.0);
}

@compute @workgroup_size(256)
fn forward_qk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate_qk((wid.x + wid.y * nwg.x) * WG + lid, 1.0);
}

@compute @workgroup_size(256)
fn backward_qk(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate_qk((wid.x + wid.y * nwg.x) * WG + lid, -1.0);
}
