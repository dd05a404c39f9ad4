//! The GPU simulator: thousands of (rule, simulation) pairs per dispatch, tokens written straight into
//! a GPU buffer. Two kernels give the same tokens bit for bit: `shaders/nca.wgsl`, one simulation per
//! workgroup and a u32 per cell (the fallback), and `shaders/nca_packed.wgsl`, several simulations per
//! workgroup with a byte per cell, in the variants of [`VARIANTS`]: `NCALM_NCA` forces one, and the
//! tuner (`gpu::tune`) picks one per grid and rule shape on GPUs.

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::reference::initial_cdf;
use super::rule::{RuleTable, TableLayout, DOMAIN_INITIAL_GRID, DOMAIN_STEP_NOISE};
use super::simulator::{Recording, SimRequest, Simulate};
use super::spec::NcaSpec;
use crate::gpu::tune::{self, KernelVariant, VariantTable};
use crate::gpu::{
    compile_compute, storage_buffer, uniform_buffer, wgsl_consts, Gpu, Kernel, Readback, Shader, WgslConst,
};
use crate::rng::{derive_key, GUMBEL_MAX, GUMBEL_MIN};

const RNG_WGSL: &str = crate::gpu::RNG_WGSL;
const NCA_WGSL: &str =
    concat!(include_str!("../../shaders/nca_common.wgsl"), include_str!("../../shaders/nca.wgsl"));
const NCA_PACKED_WGSL: &str =
    concat!(include_str!("../../shaders/nca_common.wgsl"), include_str!("../../shaders/nca_packed.wgsl"));
const SHADER: Shader = Shader::new("nca", NCA_WGSL).with_rng();
const PACKED_SHADER: Shader = Shader::new("nca_packed", NCA_PACKED_WGSL).with_rng();

/// How the simulator lays simulations on workgroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `shaders/nca.wgsl`: one simulation per workgroup, a u32 per cell, an invocation per cell.
    OnePerWorkgroup,
    /// `shaders/nca_packed.wgsl`: `sims` simulations per workgroup, a byte per cell, an invocation per
    /// four cells of a row; `skip_dead` leaves out of the output layer the hidden units the ReLU zeroes.
    Packed { sims: u32, skip_dead: bool },
}

macro_rules! packed {
    ($name:literal, $sims:literal, $skip:literal) => {
        KernelVariant {
            variant: Variant::Packed { sims: $sims, skip_dead: $skip },
            name: $name,
            shaders: &[PACKED_SHADER],
            tile: [$sims, 1],
            requires: wgpu::Features::empty(),
            tunable: true,
        }
    };
}

/// Every simulator kernel; `NCALM_NCA` forces one. `sim1`, today's kernel, is the fallback and the
/// reference the others are checked against, token for token.
pub static VARIANTS: VariantTable<Variant> = VariantTable::new(
    "NCALM_NCA",
    &[
        KernelVariant {
            variant: Variant::OnePerWorkgroup,
            name: "sim1",
            shaders: &[SHADER],
            tile: [1, 1],
            requires: wgpu::Features::empty(),
            tunable: true,
        },
        packed!("u8x1", 1, false),
        packed!("u8x2", 2, false),
        packed!("u8x4", 4, false),
        packed!("u8x8", 8, false),
        packed!("u8x4skip", 4, true),
        packed!("u8x8skip", 8, true),
    ],
);

impl Variant {
    /// Every tunable variant, in table order (the fallback first).
    pub fn all() -> Vec<Variant> {
        VARIANTS.tunable()
    }

    pub fn name(&self) -> &'static str {
        VARIANTS.entry(*self).name
    }

    /// Simulations one workgroup runs.
    pub fn sims_per_workgroup(&self) -> u32 {
        match self {
            Variant::OnePerWorkgroup => 1,
            Variant::Packed { sims, .. } => *sims,
        }
    }

    /// u32 words of one packed grid row: four cells to a word.
    fn row_words(spec: &NcaSpec) -> usize {
        (spec.grid as usize).div_ceil(4)
    }

    /// Bytes of workgroup memory one workgroup of this variant uses for `spec`.
    pub fn workgroup_bytes(&self, spec: &NcaSpec) -> u64 {
        let rule_len = TableLayout::new(spec).len as u64;
        match self {
            Variant::OnePerWorkgroup => (rule_len + 2 * spec.cells() as u64) * 4,
            Variant::Packed { sims, .. } => {
                let words = spec.grid as u64 * Self::row_words(spec) as u64;
                u64::from(*sims) * ((rule_len + 2 * words) * 4 + 8)
            }
        }
    }

    /// Whether this variant's workgroup memory for `spec` fits `gpu` (tuning never picks one that does
    /// not; asking for it by name fails with a clear error).
    pub fn fits(&self, gpu: &Gpu, spec: &NcaSpec) -> bool {
        self.workgroup_bytes(spec) <= u64::from(gpu.limits().max_compute_workgroup_storage_size)
    }

    /// Invocations per workgroup: for `sim1` the cells rounded up to whole 32-wide waves, at most 256;
    /// for the packed kernels the words of four cells of every simulation spread over as few rounds of at most 256 (and the device's limit) as they need, each rounded up
    /// to whole 32-wide waves.
    fn workgroup_size(&self, spec: &NcaSpec, max_invocations: u32) -> u32 {
        let items = match self {
            // As it always was: the cells rounded up to whole waves, at most 256.
            Variant::OnePerWorkgroup => {
                return (spec.cells() as u32).next_multiple_of(32).min(256).min(max_invocations)
            }
            Variant::Packed { sims, .. } => sims * spec.grid * Self::row_words(spec) as u32,
        };
        let cap = 256.min(max_invocations).max(1);
        let rounds = items.div_ceil(cap);
        items.div_ceil(rounds).next_multiple_of(32).min(cap)
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SimHeader {
    rule: u32,
    key_lo: u32,
    key_hi: u32,
    _pad: u32,
    cdf: [f32; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    sims: u32,
    burn_in: u32,
    frames: u32,
    tokens_per_sim: u32,
    delimiters: u32,
    temperature: f32,
    identity_bias: f32,
    row: u32,
}

/// Where the fields of [`Params`] lie, for the test that holds them to the shader's.
#[cfg(test)]
pub(crate) fn params_layout() -> crate::gpu::StructLayout {
    crate::gpu::host_layout!(Params {
        sims,
        burn_in,
        frames,
        tokens_per_sim,
        delimiters,
        temperature,
        identity_bias,
        row
    })
}

/// The WGSL of `variant` specialised to one rule family (sizes become constants, so loops unroll and
/// per-cell arrays live in registers).
pub fn variant_source(spec: &NcaSpec, variant: Variant, workgroup: u32) -> String {
    let lay = TableLayout::new(spec);
    let sizes = [
        ("G", spec.grid as usize),
        ("N", spec.states as usize),
        ("C", spec.conv_channels as usize),
        ("H", spec.hidden as usize),
        ("CELLS", spec.cells()),
        ("PATCHES", (spec.grid as usize / 2).pow(2)),
        ("WG", workgroup as usize),
        ("RULE_LEN", lay.len),
        ("CONV_BIAS", lay.conv_bias),
        ("HIDDEN", lay.hidden),
        ("HIDDEN_BIAS", lay.hidden_bias),
        ("OUT", lay.out),
        ("OUT_BIAS", lay.out_bias),
    ];
    let mut consts: Vec<(&str, WgslConst)> =
        sizes.into_iter().map(|(name, value)| (name, WgslConst::U32(value as u32))).collect();
    consts.extend([
        ("GUMBEL_MIN", WgslConst::F32(GUMBEL_MIN)),
        ("GUMBEL_MAX", WgslConst::F32(GUMBEL_MAX)),
        ("DOMAIN_INITIAL_GRID", WgslConst::U32(DOMAIN_INITIAL_GRID)),
        ("DOMAIN_STEP_NOISE", WgslConst::U32(DOMAIN_STEP_NOISE)),
    ]);
    let shader = VARIANTS.entry(variant).shaders[0];
    if let Variant::Packed { sims, skip_dead } = variant {
        let row_words = Variant::row_words(spec);
        consts.extend([
            ("SPW", WgslConst::U32(sims)),
            ("ROW_WORDS", WgslConst::U32(row_words as u32)),
            ("WORDS", WgslConst::U32((spec.grid as usize * row_words) as u32)),
            ("SKIP_DEAD", WgslConst::Bool(skip_dead)),
        ]);
    }
    wgsl_consts(&consts) + RNG_WGSL + shader.source
}

/// The WGSL of today's kernel, `sim1`, specialised to one rule family.
pub fn shader_source(spec: &NcaSpec, workgroup: u32) -> String {
    variant_source(spec, Variant::OnePerWorkgroup, workgroup)
}

/// The tuning class of a rule family: the sizes the kernels are specialised to.
fn tuning_class(spec: &NcaSpec) -> String {
    format!("nca g{} n{} c{} h{}", spec.grid, spec.states, spec.conv_channels, spec.hidden)
}

pub struct GpuSimulator {
    gpu: Gpu,
    spec: NcaSpec,
    variant: Variant,
    kernel: Kernel,
    rule_len: usize,
}

impl GpuSimulator {
    /// The simulator in the variant forced by `NCALM_NCA`, tuned for this rule family on this adapter
    /// (see `gpu::tune`; every candidate is first checked token for token against `sim1`), or `sim1`.
    pub fn new(gpu: &Gpu, spec: &NcaSpec) -> Result<Self> {
        spec.validate()?;
        let fallback = Variant::OnePerWorkgroup;
        let mut reference: Option<Vec<u32>> = None;
        let mut trial = |variant: Variant| -> Result<tune::Trial> {
            if !variant.fits(gpu, spec) {
                return Ok(tune::Trial::Seconds(f64::INFINITY));
            }
            let sim = Self::with_variant(gpu, spec, variant)?;
            let (tokens, seconds) = sim.trial_run()?;
            if variant == fallback {
                reference = Some(tokens);
            } else {
                let want = match &reference {
                    Some(r) => r.clone(),
                    None => {
                        let r = Self::with_variant(gpu, spec, fallback)?.trial_run()?.0;
                        reference = Some(r.clone());
                        r
                    }
                };
                if let Some(at) = want.iter().zip(&tokens).position(|(a, b)| a != b) {
                    return Ok(tune::Trial::Disagrees(format!(
                        "token {at} is {} where sim1 wrote {}",
                        tokens[at], want[at]
                    )));
                }
            }
            Ok(tune::Trial::Seconds(seconds))
        };
        let variant = VARIANTS.pick(gpu, &tuning_class(spec), fallback, &mut trial)?;
        Self::with_variant(gpu, spec, variant)
    }

    /// The simulator in `variant` (tests and benchmarks compare them; every one writes the same tokens).
    pub fn with_variant(gpu: &Gpu, spec: &NcaSpec, variant: Variant) -> Result<Self> {
        spec.validate()?;
        VARIANTS.check_supported(gpu, variant)?;
        let limits = gpu.limits();
        let rule_len = TableLayout::new(spec).len;
        let shared = variant.workgroup_bytes(spec);
        if !variant.fits(gpu, spec) {
            bail!(
                "a {g}x{g} grid needs {shared} bytes of workgroup memory for the simulator kernel {}, but this \
                 device offers {} bytes: use a smaller --grid{}",
                variant.name(),
                limits.max_compute_workgroup_storage_size,
                if variant == Variant::OnePerWorkgroup { "" } else { " or another kernel (NCALM_NCA)" },
                g = spec.grid
            );
        }
        let wg = variant.workgroup_size(spec, limits.max_compute_invocations_per_workgroup);
        let name = VARIANTS.entry(variant).shaders[0].name;
        let kernel = compile_compute(gpu, name, &variant_source(spec, variant, wg), "simulate")?;
        Ok(Self { gpu: gpu.clone(), spec: spec.clone(), variant, kernel, rule_len })
    }

    pub fn spec(&self) -> &NcaSpec {
        &self.spec
    }

    /// The kernel variant this simulator runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Tuning's trial: a fixed batch of random rules of this family (training sequences' frames, without
    /// burn-in), its tokens and the best of a few timed dispatches in seconds.
    fn trial_run(&self) -> Result<(Vec<u32>, f64)> {
        let rule_count = 256;
        let sims_n = if self.gpu.is_cpu() { 64 } else { 8192 };
        let tables: Vec<RuleTable> = (0..rule_count as u64)
            .map(|r| super::Rule::sample(&self.spec, derive_key(0x7u64 << 40, &[r])).table(&self.spec))
            .collect();
        let sims: Vec<SimRequest> = (0..sims_n as u64)
            .map(|i| SimRequest {
                rule: (i % rule_count as u64) as u32,
                key: derive_key(0x7u64 << 40, &[1, i]),
            })
            .collect();
        let patches = (self.spec.grid / 2).pow(2);
        let frames = 16;
        let rec = Recording { frames, delimiters: true, tokens_per_sim: frames * (patches + 2) };
        let tokens = self.run(&tables, &sims, &rec)?;
        let rules = self.upload_rules(&tables)?;
        let out = self.token_buffer(sims.len(), &rec)?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            self.encode(&mut encoder, &rules, tables.len(), &sims, &rec, &out)?;
            let commands = encoder.finish();
            let start = std::time::Instant::now();
            self.gpu.queue.submit([commands]);
            self.gpu.wait()?;
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok((tokens, best))
    }

    /// Uploads rule tables (one buffer, the flat layout of [`RuleTable`]).
    pub fn upload_rules(&self, tables: &[RuleTable]) -> Result<wgpu::Buffer> {
        if let Some(bad) = tables.iter().position(|t| t.data.len() != self.rule_len) {
            bail!(
                "rule table {bad} has {} values; this rule family needs {}",
                tables[bad].data.len(),
                self.rule_len
            );
        }
        let flat: Vec<f32> = tables.iter().flat_map(|t| t.data.iter().copied()).collect();
        self.check_binding("rule tables", flat.len() as u64 * 4)?;
        Ok(storage_buffer(&self.gpu, "nca rules", bytemuck::cast_slice(&flat), wgpu::BufferUsages::empty()))
    }

    fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let limit = self.gpu.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            bail!("{what} take {bytes} bytes, above this device's storage binding limit of {limit} bytes: use fewer per batch");
        }
        Ok(())
    }

    /// Most simulations one dispatch can write for this recording (bounded by the binding size).
    pub fn max_sims_per_dispatch(&self, rec: &Recording) -> usize {
        let limits = self.gpu.limits();
        let by_binding = limits.max_storage_buffer_binding_size / (u64::from(rec.tokens_per_sim) * 4).max(1);
        let by_grid = u64::from(limits.max_compute_workgroups_per_dimension).pow(2)
            * u64::from(self.variant.sims_per_workgroup());
        by_binding.min(by_grid).min(1 << 22) as usize
    }

    /// Prepares the per-simulation headers (initial distributions are drawn on the host, see
    /// [`initial_cdf`]) and records one dispatch that writes `sims.len() * rec.tokens_per_sim` u32
    /// tokens to `out`. Nothing is read back: the tokens can feed a training step directly.
    pub fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        rules: &wgpu::Buffer,
        rule_count: usize,
        sims: &[SimRequest],
        rec: &Recording,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        if sims.is_empty() {
            return Ok(());
        }
        if rec.frames == 0 {
            bail!("a recording needs at least one frame");
        }
        if sims.len() > self.max_sims_per_dispatch(rec) {
            bail!(
                "{} simulations exceed the {} one dispatch can hold",
                sims.len(),
                self.max_sims_per_dispatch(rec)
            );
        }
        let needed = sims.len() as u64 * u64::from(rec.tokens_per_sim) * 4;
        if out.size() < needed {
            bail!("token buffer holds {} bytes, {needed} needed", out.size());
        }
        if let Some(s) = sims.iter().find(|s| s.rule as usize >= rule_count) {
            bail!("simulation asks for rule {} of {rule_count}", s.rule);
        }
        let header = |s: &SimRequest| {
            let mut cdf = [1.0f32; 16];
            let c = initial_cdf(&self.spec, s.key);
            cdf[..c.len()].copy_from_slice(&c);
            SimHeader { rule: s.rule, key_lo: s.key as u32, key_hi: (s.key >> 32) as u32, _pad: 0, cdf }
        };
        let headers: Vec<SimHeader> = sims.par_iter().map(header).collect();
        let max_dim = self.gpu.limits().max_compute_workgroups_per_dimension as usize;
        let groups = sims.len().div_ceil(self.variant.sims_per_workgroup() as usize);
        let row = groups.min(max_dim);
        let params = Params {
            sims: sims.len() as u32,
            burn_in: self.spec.burn_in,
            frames: rec.frames,
            tokens_per_sim: rec.tokens_per_sim,
            delimiters: u32::from(rec.delimiters),
            temperature: self.spec.temperature,
            identity_bias: self.spec.identity_bias,
            row: row as u32,
        };
        let params = uniform_buffer(&self.gpu, "nca params", bytemuck::bytes_of(&params));
        let headers = storage_buffer(
            &self.gpu,
            "nca sims",
            bytemuck::cast_slice(&headers),
            wgpu::BufferUsages::empty(),
        );
        let bind = self.kernel.bind(
            &self.gpu,
            &[
                params.as_entire_binding(),
                rules.as_entire_binding(),
                headers.as_entire_binding(),
                out.as_entire_binding(),
            ],
        );
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("nca"), timestamp_writes: None });
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(row as u32, groups.div_ceil(row) as u32, 1);
        Ok(())
    }

    /// A token buffer for `sims` simulations of this recording.
    pub fn token_buffer(&self, sims: usize, rec: &Recording) -> Result<wgpu::Buffer> {
        let bytes = (sims as u64 * u64::from(rec.tokens_per_sim) * 4).max(4);
        self.check_binding("tokens", bytes)?;
        Ok(self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("nca tokens"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// Runs simulations and reads their tokens back: `rec.tokens_per_sim` per simulation, in order.
    pub fn run(&self, tables: &[RuleTable], sims: &[SimRequest], rec: &Recording) -> Result<Vec<u32>> {
        let rules = self.upload_rules(tables)?;
        let per = self.max_sims_per_dispatch(rec).max(1);
        let mut tokens = Vec::with_capacity(sims.len() * rec.tokens_per_sim as usize);
        for chunk in sims.chunks(per) {
            let out = self.token_buffer(chunk.len(), rec)?;
            let readback = Readback::new(&self.gpu, out.size());
            let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
            self.encode(&mut encoder, &rules, tables.len(), chunk, rec, &out)?;
            readback.copy_from(&mut encoder, &out, out.size())?;
            self.gpu.queue.submit([encoder.finish()]);
            tokens.extend(readback.read::<u32>(&self.gpu, chunk.len() * rec.tokens_per_sim as usize)?);
        }
        Ok(tokens)
    }
}

impl Simulate for GpuSimulator {
    fn simulate(&self, tables: &[RuleTable], sims: &[SimRequest], rec: &Recording) -> Result<Vec<u32>> {
        self.run(tables, sims, rec)
    }

    fn describe(&self) -> String {
        format!("GPU: {}", self.gpu.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::validate_wgsl;

    #[test]
    fn shader_validates_for_several_rule_families() {
        for spec in [
            NcaSpec::default(),
            NcaSpec { grid: 4, states: 2, conv_channels: 1, hidden: 1, ..NcaSpec::default() },
            NcaSpec {
                grid: 40,
                states: 15,
                conv_channels: 16,
                hidden: 64,
                channel_wrap: false,
                ..NcaSpec::default()
            },
        ] {
            for variant in Variant::all() {
                let wg = variant.workgroup_size(&spec, 256);
                validate_wgsl(variant.name(), &variant_source(&spec, variant, wg)).unwrap();
            }
        }
    }
}
