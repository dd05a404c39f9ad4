// What both NCA simulator kernels share (shaders/nca.wgsl and shaders/nca_packed.wgsl, each prepended
// with this file by src/nca/gpu.rs): the launch parameters, a simulation's header, the bindings and the
// Gumbel-max draw of a next state.

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

// The Gumbel-max draw of a cell's next state at step t: argmax over states of logit / T plus Gumbel noise
// (four states per Philox call), skipping states whose logit is too far below the best for any noise
// to lift them. Both simulator kernels draw through it, so they pick the same states bit for bit.
fn gumbel_max(logits: array<f32, N>, best_logit: f32, key: vec2<u32>, t: u32, cell: u32) -> u32 {
    let temperature = params.temperature;
    // Slack for rounding of logit / T at large magnitudes.
    let span = GUMBEL_SPAN + abs(best_logit / temperature) * 1e-5;
    var best = 0u;
    var best_score = 0.0;
    var found = false;
    var block = 0xFFFFFFFFu;
    var words = vec4<u32>(0u);
    for (var k = 0u; k < N; k++) {
        if ((best_logit - logits[k]) / temperature <= span) {
            if (k / 4u != block) {
                block = k / 4u;
                words = philox(key, vec4<u32>(t, cell, block, DOMAIN_STEP_NOISE));
            }
            let score = logits[k] / temperature + gumbel(words[k % 4u]);
            if (!found || score > best_score) {
                best = k;
                best_score = score;
                found = true;
            }
        }
    }
    return best;
}
