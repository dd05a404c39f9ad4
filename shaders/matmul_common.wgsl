// What every matmul kernel shares (src/ops/matmul/mod.rs prepends it to matmul.wgsl and to the
// 128 x 128 kernels): the parameters and bindings.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // 1: add bias[col] to every row; 0: no bias (binding 4 then holds an unread placeholder).
    has_bias: u32,
    // 1: add the result to what the output holds; 0: overwrite it.
    accumulate: u32,
    // Column sums only: row blocks of stage 1 (= rows of the partial sums).
    row_blocks: u32,
    // Split-K (the 64 x 64 kernel only): the k of one slice (k itself when unsplit), and the number of
    // slices.
    k_split: u32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> bias: array<f32>;
