// Rotary position embedding in the rotate-half convention (Hugging Face Llama), and its backward
// (gradients.md): y_i = x_i cos a_i - x_{i+D/2} sin a_i, y_{i+D/2} = x_{i+D/2} cos a_i + x_i sin a_i with
// a_i = pos * inv_freq[i], pos = row % seq_len. The backward pass rotates by -a.
// One invocation per (row, head, i < D/2) pair, 256 per workgroup, linearised over x and y. Each invocation
// reads both elements of its pair before writing them, so dst may be src (in place).

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

// Rotates the pair `pair` by sign * a.
fn rotate(pair: u32, sign: f32) {
    let half = p.head_dim / 2u;
    if (pair >= p.rows * p.heads * half) {
        return;
    }
    let i = pair % half;
    let row_head = pair / half;
    let pos = (row_head / p.heads) % p.seq_len;
    let base = row_head * p.head_dim;
    // f32 product as Hugging Face computes it (position times f32 inverse frequency).
    let cs = cos_sin(f32(pos) * p.inv_freq[i / 4u][i % 4u]);
    let s = sign * cs.y;
    let a = src[base + i];
    let b = src[base + i + half];
    dst[base + i] = a * cs.x - b * s;
    dst[base + i + half] = b * cs.x + a * s;
}

@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate((wid.x + wid.y * nwg.x) * WG + lid, 1.0);
}

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    rotate((wid.x + wid.y * nwg.x) * WG + lid, -1.0);
}
