// The operands' elements as the kernels whose layout is a WGSL constant read them (the 128 x 128 and
// cooperative-matrix kernels, after matmul_common.wgsl): op(A) and op(B) by row and column, whatever
// TRANS_A and TRANS_B say they are stored as, and 0 past the matrix's edges.

// op(A)[row, kk], or 0 outside the matrix.
fn load_a(row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (TRANS_A) {
        return a[kk * p.m + row];
    }
    return a[row * p.k + kk];
}

// op(B)[kk, col], or 0 outside the matrix.
fn load_b(kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if (TRANS_B) {
        return b[col * p.k + kk];
    }
    return b[kk * p.n + col];
}
