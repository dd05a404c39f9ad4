// Evaluates the WGSL Philox and its float conversions on given (key, counter) pairs, so tests can
// compare them word for word with src/rng.rs. Appended to rng.wgsl.

@group(0) @binding(0) var<storage, read> cases: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> results: array<vec4<u32>>;

@compute @workgroup_size(64)
fn probe(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i >= arrayLength(&results) / 2u) {
        return;
    }
    let w = philox(cases[2u * i].xy, cases[2u * i + 1u]);
    results[2u * i] = w;
    results[2u * i + 1u] = vec4<u32>(
        bitcast<u32>(unit_f32(w.x)),
        bitcast<u32>(open_unit_f32(w.y)),
        bitcast<u32>(gumbel(w.z)),
        0u,
    );
}
