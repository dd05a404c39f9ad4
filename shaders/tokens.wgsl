// Token plumbing on the GPU: micro-batches from stored sequences, and greedy predictions.

struct Params {
    // prepare: sequences, seq_len (L), stride (stored tokens per sequence, >= L + 1), masked targets
    // argmax: rows, vocab
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}


@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> source: array<u32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> targets: array<u32>;
@group(0) @binding(4) var<storage, read_write> logits: array<f32>;

// ids[s, t] = seq[s, t]; targets[s, t] = seq[s, t + 1], or IGNORE for the first `masked` positions.
@compute @workgroup_size(256)
fn prepare(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 256u + lid;
    let seq_len = p.b;
    if (i >= p.a * seq_len) {
        return;
    }
    let s = i / seq_len;
    let t = i % seq_len;
    let base = s * p.c + t;
    ids[i] = source[base];
    targets[i] = select(source[base + 1u], IGNORE, t < p.d);
}

var<workgroup> best_value: array<f32, 256>;
var<workgroup> best_index: array<u32, 256>;

// ids[row] = the first index of the largest logit of the row (one workgroup per row).
@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    let vocab = p.b;
    if (row >= p.a) {
        return;
    }
    var value = -3.4e38;
    var index = 0xFFFFFFFFu;
    for (var j = lid; j < vocab; j += 256u) {
        let z = logits[row * vocab + j];
        if (z > value) {
            value = z;
            index = j;
        }
    }
    best_value[lid] = value;
    best_index[lid] = index;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let v = best_value[lid + stride];
            let k = best_index[lid + stride];
            if (v > best_value[lid] || (v == best_value[lid] && k < best_index[lid])) {
                best_value[lid] = v;
                best_index[lid] = k;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        ids[row] = best_index[0];
    }
}
