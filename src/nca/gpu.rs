//! The GPU simulator: thousands of (rule, simulation) pairs per dispatch, one workgroup each, tokens
//! written straight into a GPU buffer (see `shaders/nca.wgsl`).

use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::reference::initial_cdf;
use super::rule::{RuleTable, TableLayout, DOMAIN_INITIAL_GRID, DOMAIN_STEP_NOISE};
use super::simulator::{Recording, SimRequest, Simulate};
use super::spec::NcaSpec;
use crate::gpu::{
    compile_compute, storage_buffer, uniform_buffer, wgsl_consts, Gpu, Kernel, Readback, WgslConst,
};
use crate::rng::{GUMBEL_MAX, GUMBEL_MIN};

const RNG_WGSL: &str = crate::gpu::RNG_WGSL;
const NCA_WGSL: &str = include_str!("../../shaders/nca.wgsl");

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

/// The WGSL of the simulator specialised to one rule family (sizes become constants, so loops unroll
/// and per-cell arrays live in registers).
pub fn shader_source(spec: &NcaSpec, workgroup: u32) -> String {
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
    wgsl_consts(&consts) + RNG_WGSL + NCA_WGSL
}

/// Threads per simulation: the cells rounded up to whole 32-wide waves, at most 256.
fn workgroup_size(spec: &NcaSpec, max_invocations: u32) -> u32 {
    (spec.cells() as u32).next_multiple_of(32).min(256).min(max_invocations)
}

pub struct GpuSimulator {
    gpu: Gpu,
    spec: NcaSpec,
    kernel: Kernel,
    rule_len: usize,
}

impl GpuSimulator {
    pub fn new(gpu: &Gpu, spec: &NcaSpec) -> Result<Self> {
        spec.validate()?;
        let limits = gpu.limits();
        let rule_len = TableLayout::new(spec).len;
        let shared = (rule_len + 2 * spec.cells()) * 4;
        if shared as u64 > u64::from(limits.max_compute_workgroup_storage_size) {
            bail!(
                "a {g}x{g} grid needs {shared} bytes of workgroup memory for the simulator, but this device \
                 offers {} bytes: use a smaller --grid",
                limits.max_compute_workgroup_storage_size,
                g = spec.grid
            );
        }
        let wg = workgroup_size(spec, limits.max_compute_invocations_per_workgroup);
        let kernel = compile_compute(gpu, "nca", &shader_source(spec, wg), "simulate")?;
        Ok(Self { gpu: gpu.clone(), spec: spec.clone(), kernel, rule_len })
    }

    pub fn spec(&self) -> &NcaSpec {
        &self.spec
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
        let by_grid = u64::from(limits.max_compute_workgroups_per_dimension).pow(2);
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
        let row = sims.len().min(max_dim);
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
        pass.dispatch_workgroups(row as u32, sims.len().div_ceil(row) as u32, 1);
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
            let wg = workgroup_size(&spec, 256);
            validate_wgsl("nca", &shader_source(&spec, wg)).unwrap();
        }
    }
}
