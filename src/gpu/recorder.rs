//! Recording kernel launches: every op records dispatches into a [`Recorder`], which batches them into
//! one submission with their small parameter structs packed into a single uniform buffer.
//!
//! Binding convention of every op kernel: `@group(0) @binding(0) var<uniform> p: Params;` then the
//! tensors at bindings 1, 2, ... in the order the launcher passes them, all declared
//! `var<storage, read_write>`: tensors of one role share a buffer, and wgpu forbids binding one buffer
//! both read-only and writable in a dispatch.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{bail, Result};

use super::profiler::{KernelTiming, Profiler, QUERY_CAPACITY};
use super::{compile_compute, Gpu, GpuTensor, Kernel, Readback};

/// A WGSL source with a name for errors; `with_rng` prepends `shaders/rng.wgsl`, and `consts` are
/// prepended as WGSL `const` declarations, so that values the host also uses are written once, in Rust.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    pub with_rng: bool,
    pub consts: &'static [(&'static str, WgslConst)],
}

/// The value of a constant prepended to a shader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WgslConst {
    U32(u32),
    F32(f32),
    Bool(bool),
}

impl Shader {
    /// `source` named `name`, without the RNG or constants.
    pub const fn new(name: &'static str, source: &'static str) -> Self {
        Self { name, source, with_rng: false, consts: &[] }
    }

    /// The same shader with `shaders/rng.wgsl` prepended.
    pub const fn with_rng(self) -> Self {
        Self { with_rng: true, ..self }
    }

    /// The same shader with `consts` prepended.
    pub const fn with_consts(self, consts: &'static [(&'static str, WgslConst)]) -> Self {
        Self { consts, ..self }
    }

    pub fn full_source(&self) -> String {
        // Directives (`enable f16;`) must come before any declaration.
        let body = self.source.trim_start();
        let split = body.find('\n').filter(|_| body.starts_with("enable ")).map_or(0, |i| i + 1);
        let (directives, body) = body.split_at(split);
        let mut src = directives.to_string() + &wgsl_consts(self.consts);
        if self.with_rng {
            src += super::RNG_WGSL;
            src += "\n";
        }
        src + body
    }
}

/// WGSL `const` declarations of `consts`, one a line.
pub fn wgsl_consts(consts: &[(&str, WgslConst)]) -> String {
    consts
        .iter()
        .map(|(name, value)| match value {
            WgslConst::U32(v) => format!("const {name}: u32 = {v}u;\n"),
            WgslConst::F32(v) => format!("const {name}: f32 = {v:?};\n"),
            WgslConst::Bool(v) => format!("const {name}: bool = {v};\n"),
        })
        .collect()
}

/// An op shader in two builds around the workgroup reductions it calls (`group_sum`, `group_max`): on a
/// tree in workgroup memory (`shaders/group_reduce_tree.wgsl`), and on subgroup operations
/// (`shaders/group_reduce_subgroups.wgsl`) for adapters that have them.
#[derive(Clone, Copy, Debug)]
pub struct ReducingShader {
    pub tree: Shader,
    pub subgroups: Shader,
}

impl ReducingShader {
    /// The build for `gpu`: subgroups where it has them (unless disabled by `NCALM_DISABLE_FEATURES`).
    pub fn for_gpu(self, gpu: &Gpu) -> Shader {
        if gpu.features().contains(wgpu::Features::SUBGROUP) {
            self.subgroups
        } else {
            self.tree
        }
    }
}

/// Compiled pipelines, created once per (shader, entry point) and shared by all recordings, the
/// profiler that times their dispatches when one is attached, and a scratch buffer ops may borrow.
#[derive(Default)]
pub struct KernelCache {
    kernels: Mutex<HashMap<(&'static str, String), Kernel>>,
    profiler: Mutex<Option<Profiler>>,
    scratch: Mutex<Option<GpuTensor>>,
}

impl KernelCache {
    /// Times every later dispatch recorded with this cache (None stops timing).
    pub fn set_profiler(&self, profiler: Option<Profiler>) {
        *self.profiler.lock().unwrap_or_else(|p| p.into_inner()) = profiler;
    }

    fn profiler(&self) -> Option<Profiler> {
        self.profiler.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `len` floats of scratch, shared by every recording with this cache and grown as needed. An op may
    /// use it only between its own dispatches: the queue runs recordings one after another and dispatches
    /// in order, so no two users overlap.
    fn scratch(&self, gpu: &Gpu, len: usize) -> Result<GpuTensor> {
        let mut slot = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|t| t.len < len) {
            // An old buffer lives on while recorded work still refers to it.
            *slot = Some(gpu.tensor(len, "op scratch")?);
        }
        let whole = slot.as_ref().expect("just allocated");
        Ok(GpuTensor { len, ..whole.clone() })
    }

    pub fn get(&self, gpu: &Gpu, shader: &Shader, entry: &str) -> Result<Kernel> {
        let key = (shader.name, entry.to_string());
        if let Some(k) = self.kernels.lock().expect("kernel cache poisoned").get(&key) {
            return Ok(k.clone());
        }
        let kernel = compile_compute(gpu, shader.name, &shader.full_source(), entry)?;
        self.kernels.lock().expect("kernel cache poisoned").insert(key, kernel.clone());
        Ok(kernel)
    }
}

/// Room for parameter structs per submission; a recording that needs more submits what it has.
const PARAMS_CAPACITY: u64 = 1 << 20;

/// The encoder a [`Recorder`] records into: its own, or one a host lent it.
enum Encoder<'g> {
    Owned(wgpu::CommandEncoder),
    Borrowed(&'g mut wgpu::CommandEncoder),
}

impl Encoder<'_> {
    fn get(&mut self) -> &mut wgpu::CommandEncoder {
        match self {
            Encoder::Owned(e) => e,
            Encoder::Borrowed(e) => e,
        }
    }
}

/// Records dispatches; `submit` sends them. Work recorded but not submitted is dropped.
///
/// A recorder made by [`Recorder::in_encoder`] records into a host's encoder instead, and the host
/// submits: [`submit`](Self::submit) then only stages the parameter structs.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    cache: &'g KernelCache,
    encoder: Encoder<'g>,
    params: Vec<u8>,
    params_buffer: wgpu::Buffer,
    align: usize,
    dispatches: usize,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu, cache: &'g KernelCache) -> Self {
        let align = gpu.limits().min_uniform_buffer_offset_alignment.max(16) as usize;
        Self {
            gpu,
            cache,
            encoder: Encoder::Owned(gpu.device.create_command_encoder(&Default::default())),
            params: Vec::new(),
            params_buffer: Self::params_buffer(gpu),
            align,
            dispatches: 0,
        }
    }

    /// A recorder that records into a host's `encoder`, so that ncalm's dispatches join the host's own
    /// commands in one submission. Its [`submit`](Self::submit) stages the parameter structs with
    /// `queue.write_buffer` (wgpu applies staged writes before the commands of the next submission) and
    /// submits nothing: the host submits its encoder after that. Such a recording cannot be split into
    /// several submissions: a dispatch whose parameters would overflow the recorder's parameter buffer
    /// (see [`params_left`](Self::params_left)) fails, as does any dispatch while a profiler is attached
    /// to `cache` (its timings need submissions of their own).
    pub fn in_encoder(gpu: &'g Gpu, cache: &'g KernelCache, encoder: &'g mut wgpu::CommandEncoder) -> Self {
        Self { encoder: Encoder::Borrowed(encoder), ..Self::new(gpu, cache) }
    }

    /// Bytes left for parameter structs before an owned recording submits what it has (and a borrowed
    /// one fails). Each dispatch takes its struct's size rounded up to the device's uniform offset
    /// alignment.
    pub fn params_left(&self) -> usize {
        (PARAMS_CAPACITY as usize).saturating_sub(self.params.len().next_multiple_of(self.align))
    }

    fn params_buffer(gpu: &Gpu) -> wgpu::Buffer {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("op params"),
            size: PARAMS_CAPACITY,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// The command encoder, for work recorded by other means (e.g. the NCA simulator's dispatches).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder.get()
    }

    /// Declares the arithmetic and memory traffic of the next dispatch, for the profiler's GFLOP/s and
    /// GB/s (launchers of the heavy ops call it; elsewhere the profiler reports time only).
    pub fn set_cost(&mut self, flops: f64, bytes: f64) {
        if let Some(p) = self.cache.profiler() {
            p.lock().next_cost = (flops, bytes);
        }
    }

    /// `len` floats of scratch for an op's intermediate results, valid until the op's last dispatch.
    pub fn scratch(&mut self, len: usize) -> Result<GpuTensor> {
        self.cache.scratch(self.gpu, len)
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> usize {
        self.dispatches
    }

    /// Records one dispatch of `shader::entry` with `params` at binding 0 and `tensors` at 1, 2, ...
    /// `params` must be a `#[repr(C)]` struct whose size is a multiple of 16 bytes.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        shader: &Shader,
        entry: &str,
        params: &P,
        tensors: &[&GpuTensor],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let bytes = bytemuck::bytes_of(params);
        if !bytes.len().is_multiple_of(16) {
            bail!("parameters of {}::{entry} are {} bytes, not a multiple of 16", shader.name, bytes.len());
        }
        if workgroups.contains(&0) {
            return Ok(());
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        if workgroups.iter().any(|&w| w > max) {
            bail!(
                "{}::{entry} needs {workgroups:?} workgroups; this device allows {max} per dimension",
                shader.name
            );
        }
        let kernel = self.cache.get(self.gpu, shader, entry)?;
        let offset = self.params.len().next_multiple_of(self.align);
        let borrowed = matches!(self.encoder, Encoder::Borrowed(_));
        if borrowed && self.cache.profiler().is_some() {
            bail!(
                "{}::{entry}: a recording into a host's encoder cannot be profiled (the profiler submits \
                 its own work); detach the profiler or record with Recorder::new",
                shader.name
            );
        }
        if (offset + bytes.len()) as u64 > PARAMS_CAPACITY {
            if borrowed {
                bail!(
                    "{}::{entry}: the recording into a host's encoder has used its {PARAMS_CAPACITY} bytes of \
                     parameters and cannot submit part of it: record fewer dispatches per recorder",
                    shader.name
                );
            }
            self.flush();
            return self.dispatch(shader, entry, params, tensors, workgroups);
        }
        self.params.resize(offset, 0);
        self.params.extend_from_slice(bytes);
        let mut resources = vec![wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.params_buffer,
            offset: offset as u64,
            size: wgpu::BufferSize::new(bytes.len() as u64),
        })];
        resources.extend(tensors.iter().map(|t| t.binding()));
        let bind = kernel.bind(self.gpu, &resources);
        let profiler = self.cache.profiler();
        if let Some(p) = profiler.as_ref().filter(|p| !p.timestamps) {
            // No timestamp queries: time this dispatch alone by the wall clock.
            self.flush();
            self.gpu.wait()?;
            let start = std::time::Instant::now();
            self.record_pass(&kernel, &bind, workgroups, None);
            self.flush();
            self.gpu.wait()?;
            let mut state = p.lock();
            let origin = *state.origin_wall.get_or_insert(start);
            let (flops, bytes) = std::mem::take(&mut state.next_cost);
            state.timings.push(KernelTiming {
                name: kernel.name.clone(),
                start_ns: start.duration_since(origin).as_nanos() as f64,
                duration_ns: start.elapsed().as_nanos() as f64,
                flops,
                bytes,
            });
            return Ok(());
        }
        let slot = match &profiler {
            Some(p) => {
                if (p.lock().pending.len() as u32 + 1) * 2 > QUERY_CAPACITY {
                    self.flush();
                }
                let mut state = p.lock();
                let cost = std::mem::take(&mut state.next_cost);
                state.pending.push((kernel.name.clone(), cost.0, cost.1));
                Some((p.clone(), state.pending.len() as u32 - 1))
            }
            None => None,
        };
        self.record_pass(&kernel, &bind, workgroups, slot);
        Ok(())
    }

    fn record_pass(
        &mut self,
        kernel: &Kernel,
        bind: &wgpu::BindGroup,
        workgroups: [u32; 3],
        slot: Option<(Profiler, u32)>,
    ) {
        let state = slot.as_ref().map(|(p, i)| (p.lock(), *i));
        let timestamp_writes = state.as_ref().and_then(|(s, i)| {
            s.query_set.as_ref().map(|qs| wgpu::ComputePassTimestampWrites {
                query_set: qs,
                beginning_of_pass_write_index: Some(2 * i),
                end_of_pass_write_index: Some(2 * i + 1),
            })
        });
        let mut pass = self
            .encoder
            .get()
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&kernel.name), timestamp_writes });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        self.dispatches += 1;
    }

    /// Records a copy of `src` into `dst` (same length, different buffers: wgpu forbids copies within
    /// one buffer).
    pub fn copy(&mut self, src: &GpuTensor, dst: &GpuTensor) {
        assert_eq!(src.len, dst.len, "copy {} -> {}", src.label, dst.label);
        if src.len > 0 {
            self.encoder.get().copy_buffer_to_buffer(
                &src.buffer,
                src.offset,
                &dst.buffer,
                dst.offset,
                src.bytes(),
            );
        }
    }

    /// Records zero-filling `t`.
    pub fn zero(&mut self, t: &GpuTensor) {
        if t.len > 0 {
            self.encoder.get().clear_buffer(&t.buffer, t.offset, Some(t.bytes()));
        }
    }

    /// Sends what was recorded and starts a fresh recording.
    fn flush(&mut self) {
        let fresh = self.gpu.device.create_command_encoder(&Default::default());
        let Encoder::Owned(encoder) = &mut self.encoder else {
            unreachable!("a borrowed encoder is never flushed: its dispatches fail first")
        };
        let encoder = std::mem::replace(encoder, fresh);
        self.send(encoder);
        // Work already submitted still reads the old buffer's contents: continue in a new one.
        self.params_buffer = Self::params_buffer(self.gpu);
    }

    fn send(&mut self, mut encoder: wgpu::CommandEncoder) {
        if !self.params.is_empty() {
            self.gpu.queue.write_buffer(&self.params_buffer, 0, &self.params);
        }
        // Timestamps of this submission's dispatches are resolved and read back with it.
        let profiler = self.cache.profiler().filter(|p| p.timestamps);
        let readback = profiler.as_ref().and_then(|p| {
            let state = p.lock();
            let n = state.pending.len() as u32 * 2;
            (n > 0).then(|| {
                let rb = Readback::new(self.gpu, u64::from(n) * 8);
                let qs = state.query_set.as_ref().expect("timestamps");
                let resolve = state.resolve.as_ref().expect("timestamps");
                encoder.resolve_query_set(qs, 0..n, resolve, 0);
                encoder.copy_buffer_to_buffer(resolve, 0, rb.buffer(), 0, u64::from(n) * 8);
                rb
            })
        });
        self.gpu.queue.submit([encoder.finish()]);
        self.params.clear();
        if let Some(p) = profiler {
            // Profiling synchronises after every submission; the timings are what matters then.
            if let Err(e) = p.collect(self.gpu, readback) {
                eprintln!("profiler: {e:#}");
            }
        }
    }

    /// Submits everything recorded (does not wait). Recording into a host's encoder
    /// ([`in_encoder`](Self::in_encoder)), it stages the parameter structs instead, and the host submits.
    pub fn submit(mut self) {
        match std::mem::replace(
            &mut self.encoder,
            Encoder::Owned(self.gpu.device.create_command_encoder(&Default::default())),
        ) {
            Encoder::Owned(encoder) => self.send(encoder),
            Encoder::Borrowed(_) => {
                if !self.params.is_empty() {
                    self.gpu.queue.write_buffer(&self.params_buffer, 0, &self.params);
                }
            }
        }
    }
}

/// Workgroups for `count` independent groups of work, split over x and y when x would exceed 65535.
/// Shaders recover the linear index as `wid.x + wid.y * nwg.x` (`@builtin(num_workgroups) nwg`).
pub fn grid_1d(count: u32) -> [u32; 3] {
    const MAX: u32 = 65_535;
    if count <= MAX {
        [count, 1, 1]
    } else {
        [MAX, count.div_ceil(MAX), 1]
    }
}
