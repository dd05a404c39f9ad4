// What both NCA simulator kernels share (shaders/nca.wgsl and shaders/nca_packed.wgsl, each prepended
// with this file by src/nca/gpu.rs): the launch parameters, a simulation's header and the bindings.

const GUMBEL_SPAN: f32 = GUMBEL_MAX - GUMBEL_MIN;

struct Params {
    sims: u32,
    burn_in: u32,
    frames: u32,
    // Tokens written per simulation (a sequence is L + 1; scoring rollouts record frames x patches).
    tokens_per_sim: u32,
    // 1: frames are wrapped in <grid> ... </grid>; 0: patch ids only (the gzip filter's input).
    delimiters: u32,
    temperature: f32,
    identity_bias: f32,
    // Workgroups per row of the dispatch grid (its x size), for 2-D dispatches past 65535 workgroups.
    row: u32,
}

struct Sim {
    rule: u32,
    key_lo: u32,
    key_hi: u32,
    _pad: u32,
    cdf: array<f32, 16>,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> rules: array<f32>;
@group(0) @binding(2) var<storage, read> sims: array<Sim>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
