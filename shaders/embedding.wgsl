// Token embedding: out[t] = table[ids[t]], and its backward dtable[v] = sum of dout[t] over the tokens with
// ids[t] == v, summed in token order without float atomics (docs/gradients.md).
// Ids >= vocab are skipped: their output rows are zero and their gradients are dropped.

const WG: u32 = 256u;
// Vocabulary rows per backward workgroup: one bit each in a u32 (rows_hit).
// u32 words of a bitmask over one chunk of WG tokens.
const WORDS: u32 = WG / 32u;

struct Params {
    tokens: u32,
    vocab: u32,
    dim: u32,
    accumulate: u32,
}

// One binding list for both passes: `table` is the table in the forward pass and its gradient in the
// backward, `token_rows` the gathered rows in the forward pass and their gradient in the backward.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> token_rows: array<f32>;

// One invocation per output element.
@compute @workgroup_size(256)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.tokens * p.dim) {
        return;
    }
    let id = ids[i / p.dim];
    var value = 0.0;
    if (id < p.vocab) {
        value = table[id * p.dim + i % p.dim];
    }
    token_rows[i] = value;
}

// Backward: one workgroup per block of BLOCK_ROWS vocabulary rows, which it alone writes. It walks the ids
// in chunks of WG tokens, in order. Per chunk, each row of the block gets a bitmask of the chunk's tokens
// that carry its id; popcounts of those masks place the matching tokens in `order`, grouped by row and in
// token order within a row (an order-preserving compaction with u32 atomics only). Invocation lid then owns
// columns lid, lid + WG, ... of the block's rows and adds the tokens' gradient rows to them in that order,
// so each element of dtable is one sequential sum in token order.
var<workgroup> hits: array<atomic<u32>, BLOCK_ROWS * WORDS>; // hits[row * WORDS + lid / 32], bit lid % 32
var<workgroup> rows_hit: array<atomic<u32>, 2>; // bit b: row b occurs in the chunk; alternates by chunk
var<workgroup> hit_count: array<u32, BLOCK_ROWS>; // tokens of the chunk per row
var<workgroup> order: array<u32, WG>; // the chunk's matching tokens, grouped by row

@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let first = (wid.x + wid.y * nwg.x) * BLOCK_ROWS;
    if (first >= p.vocab) {
        return;
    }
    let block_rows = min(BLOCK_ROWS, p.vocab - first);
    if (p.accumulate == 0u) {
        for (var b = 0u; b < block_rows; b++) {
            for (var j = lid; j < p.dim; j += WG) {
                table[(first + b) * p.dim + j] = 0.0;
            }
        }
    }
    atomicStore(&hits[lid], 0u);
    if (lid < 2u) {
        atomicStore(&rows_hit[lid], 0u);
    }
    let word = lid / 32u;
    let bit = 1u << (lid % 32u);
    var parity = 0u;
    for (var start = 0u; start < p.tokens; start += WG) {
        // The previous chunk is done with `order` and `hit_count`, and `hits` is clear.
        workgroupBarrier();
        let t = start + lid;
        var row = BLOCK_ROWS; // none
        if (t < p.tokens) {
            let id = ids[t];
            if (id >= first && id - first < block_rows) {
                row = id - first;
            }
        }
        if (row < BLOCK_ROWS) {
            atomicOr(&hits[row * WORDS + word], bit);
            atomicOr(&rows_hit[parity], 1u << row);
        }
        // The other slot was last read before the barrier above and is next set after the next one.
        if (lid == 0u) {
            atomicStore(&rows_hit[1u - parity], 0u);
        }
        workgroupBarrier();
        if (lid < BLOCK_ROWS) {
            var count = 0u;
            for (var k = 0u; k < WORDS; k++) {
                count += countOneBits(atomicLoad(&hits[lid * WORDS + k]));
            }
            hit_count[lid] = count;
        }
        workgroupBarrier();
        if (row < BLOCK_ROWS) {
            var slot = 0u;
            for (var b = 0u; b < row; b++) {
                slot += hit_count[b];
            }
            for (var k = 0u; k < word; k++) {
                slot += countOneBits(atomicLoad(&hits[row * WORDS + k]));
            }
            slot += countOneBits(atomicLoad(&hits[row * WORDS + word]) & (bit - 1u));
            order[slot] = t;
        }
        workgroupBarrier();
        // Nobody reads the masks again before the next chunk's first barrier.
        atomicStore(&hits[lid], 0u);
        var pending = atomicLoad(&rows_hit[parity]);
        var begin = 0u;
        while (pending != 0u) {
            let b = firstTrailingBit(pending);
            pending &= pending - 1u;
            let end = begin + hit_count[b];
            let out_base = (first + b) * p.dim;
            for (var j = lid; j < p.dim; j += WG) {
                var acc = table[out_base + j];
                var k = begin;
                // Four independent loads in flight, added left to right (token order).
                for (; k + 4u <= end; k += 4u) {
                    let g0 = token_rows[order[k] * p.dim + j];
                    let g1 = token_rows[order[k + 1u] * p.dim + j];
                    let g2 = token_rows[order[k + 2u] * p.dim + j];
                    let g3 = token_rows[order[k + 3u] * p.dim + j];
                    acc = acc + g0 + g1 + g2 + g3;
                }
                for (; k < end; k++) {
                    acc += token_rows[order[k] * p.dim + j];
                }
                table[out_base + j] = acc;
            }
            begin = end;
        }
        parity = 1u - parity;
    }
}
