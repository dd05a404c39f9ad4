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

use super::{compile_compute, Gpu, GpuTensor, Kernel};

/// A WGSL source with a name for errors; `with_rng` prepends `shaders/rng.wgsl`.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    pub name: &'static str,
    pub source: &'static str,
    pub with_rng: bool,
}

impl Shader {
    pub fn full_source(&self) -> String {
        if self.with_rng {
            format!("{}\n{}", super::RNG_WGSL, self.source)
        } else {
            self.source.to_string()
        }
    }
}

/// Compiled pipelines, created once per (shader, entry point) and shared by all recordings.
#[derive(Default)]
pub struct KernelCache {
    kernels: Mutex<HashMap<(&'static str, String), Kernel>>,
}

impl KernelCache {
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

/// Records dispatches; `submit` sends them. Work recorded but not submitted is dropped.
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    cache: &'g KernelCache,
    encoder: wgpu::CommandEncoder,
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
            encoder: gpu.device.create_command_encoder(&Default::default()),
            params: Vec::new(),
            params_buffer: Self::params_buffer(gpu),
            align,
            dispatches: 0,
        }
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
        &mut self.encoder
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
        if (offset + bytes.len()) as u64 > PARAMS_CAPACITY {
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
        let mut pass = self.encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(&kernel.name),
            timestamp_writes: None,
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(workgroups[0], workgroups[1], workgroups[2]);
        self.dispatches += 1;
        Ok(())
    }

    /// Records a copy of `src` into `dst` (same length, different buffers: wgpu forbids copies within
    /// one buffer; `ops::elementwise::copy` does those).
    pub fn copy(&mut self, src: &GpuTensor, dst: &GpuTensor) {
        assert_eq!(src.len, dst.len, "copy {} -> {}", src.label, dst.label);
        if src.len > 0 {
            self.encoder.copy_buffer_to_buffer(&src.buffer, src.offset, &dst.buffer, dst.offset, src.bytes());
        }
    }

    /// Records zero-filling `t`.
    pub fn zero(&mut self, t: &GpuTensor) {
        if t.len > 0 {
            self.encoder.clear_buffer(&t.buffer, t.offset, Some(t.bytes()));
        }
    }

    /// Sends what was recorded and starts a fresh recording.
    fn flush(&mut self) {
        let encoder =
            std::mem::replace(&mut self.encoder, self.gpu.device.create_command_encoder(&Default::default()));
        self.send(encoder);
        // Work already submitted still reads the old buffer's contents: continue in a new one.
        self.params_buffer = Self::params_buffer(self.gpu);
    }

    fn send(&mut self, encoder: wgpu::CommandEncoder) {
        if !self.params.is_empty() {
            self.gpu.queue.write_buffer(&self.params_buffer, 0, &self.params);
        }
        self.gpu.queue.submit([encoder.finish()]);
        self.params.clear();
    }

    /// Submits everything recorded (does not wait).
    pub fn submit(mut self) {
        let encoder =
            std::mem::replace(&mut self.encoder, self.gpu.device.create_command_encoder(&Default::default()));
        self.send(encoder);
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
