// The row sums of attention_flash.wgsl through workgroup memory, for any adapter: the partials of each
// row meet in a region of [4][64][FLASH_KEYS] floats, 1024 * FLASH_KEYS bytes.

var<workgroup> flash_partial: array<f32, FLASH_LANES * FLASH_Q * FLASH_KEYS>;

// This row's FLASH_KEYS dot products with the staged tile at `tile_at` (rows of FLASH_PITCH): partials
// over this invocation's dimensions, added across the row's 4 invocations in workgroup memory, the same
// sums in the same order in all 4. Starts and ends with a barrier; the tile must be staged before it.
fn flash_row_dots(a: ptr<function, array<f32, FLASH_DIMS>>, tile_at: u32, row: u32, lane: u32, dims: u32) -> array<f32, FLASH_KEYS> {
    workgroupBarrier();
    for (var col = 0u; col < FLASH_KEYS; col++) {
        var dot = 0.0;
        for (var m = 0u; m < dims; m++) {
            dot = fma((*a)[m], flash_kv[tile_at + col * FLASH_PITCH + lane + FLASH_LANES * m], dot);
        }
        flash_partial[(lane * FLASH_Q + row) * FLASH_KEYS + col] = dot;
    }
    workgroupBarrier();
    var dots: array<f32, FLASH_KEYS>;
    for (var col = 0u; col < FLASH_KEYS; col++) {
        var dot = 0.0;
        for (var l = 0u; l < FLASH_LANES; l++) {
            dot += flash_partial[(l * FLASH_Q + row) * FLASH_KEYS + col];
        }
        dots[col] = dot;
    }
    return dots;
}
