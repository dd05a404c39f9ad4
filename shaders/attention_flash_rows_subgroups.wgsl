// The row sums of attention_flash.wgsl through subgroup shuffles, for adapters with wgpu's SUBGROUP
// feature: no workgroup memory and one barrier fewer per call, so a build fits tiles of twice the keys
// in the same memory. The 4 invocations of a row are consecutive (lid 4 row .. 4 row + 3), and every
// adapter's subgroups hold at least 4 consecutive invocations, so a row lies within one subgroup.

// This row's FLASH_KEYS dot products with the staged tile at `tile_at` (rows of FLASH_PITCH): partials
// over this invocation's dimensions, added across the row's 4 invocations by two butterfly shuffles.
// Each sum is (x0 + x1) + (x2 + x3) in every invocation of the row, the same bits in all 4 since
// addition commutes. Starts with a barrier; the tile must be staged before it.
fn flash_row_dots(a: ptr<function, array<f32, FLASH_DIMS>>, tile_at: u32, row: u32, lane: u32, dims: u32) -> array<f32, FLASH_KEYS> {
    workgroupBarrier();
    var dots: array<f32, FLASH_KEYS>;
    for (var col = 0u; col < FLASH_KEYS; col++) {
        var dot = 0.0;
        for (var m = 0u; m < dims; m++) {
            dot = fma((*a)[m], flash_kv[tile_at + col * FLASH_PITCH + lane + FLASH_LANES * m], dot);
        }
        dot += subgroupShuffleXor(dot, 1u);
        dot += subgroupShuffleXor(dot, 2u);
        dots[col] = dot;
    }
    return dots;
}
