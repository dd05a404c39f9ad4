// The cooperative-matrix operations of attention_coop.wgsl, each on one of its workgroup arrays: the
// only lines of it that need wgpu's cooperative matrices (16 x 16 x 16, f16 operands, f32 sums). Kept
// apart so that a test can put plain WGSL with the same meaning in their place and run the kernels'
// own logic on an adapter without cooperative matrices.

alias FragA = coop_mat16x16<f16, A>;
alias FragB = coop_mat16x16<f16, B>;
alias Sums = coop_mat16x16<f32, C>;

// Loads block `block`'s rows (16 x COOP_PITCH) of the operand staged at 0 into `fragments`, as left
// operands across the head dimension.
fn load_block(fragments: ptr<function, array<FragA, CHUNKS>>, block: u32) {
    for (var c = 0u; c < CHUNKS; c++) {
        (*fragments)[c] = coopLoadT<FragA>(&staged[block * 16u * COOP_PITCH + c * 16u], COOP_PITCH);
    }
}

// The 16 x 16 block of `staged` whose element (r, c) lies at at + r * stride + c, as a right operand.
fn staged_b(at: u32, stride: u32) -> FragB {
    return coopLoadT<FragB>(&staged[at], stride);
}

// The right operand whose element (r, c) lies at at + c * stride + r: staged rows as its columns, for
// products with a transposed tile (Q K^T).
fn staged_bt(at: u32, stride: u32) -> FragB {
    return coopLoad<FragB>(&staged[at], stride);
}

// The 16 x 16 block of `weights` at `at`, rows `stride` apart, as a left operand.
fn weights_a(at: u32, stride: u32) -> FragA {
    return coopLoadT<FragA>(&weights[at], stride);
}

// a b + c.
fn multiply_add(a: FragA, b: FragB, c: Sums) -> Sums {
    return coopMultiplyAdd(a, b, c);
}

// Writes `sums` into `scores` with element (r, c) at at + r * stride + c.
fn store_sums(sums: Sums, at: u32, stride: u32) {
    coopStoreT(sums, &scores[at], stride);
}
